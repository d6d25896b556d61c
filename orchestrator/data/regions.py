"""Province names as imports store them: the short form that the demo data, the reports and segment conditions
use (``浙江``, ``上海``, ``广西``, ``内蒙古``), whatever form a shop's export gives.

Accepted for each of the 34 provincial-level divisions: the short name, the official full name (``浙江省``,
``上海市``, ``广西壮族自治区``, ``香港特别行政区``), the short name plus ``省`` or ``市`` (a common slip such as
``广西省``), and the pinyin / English name in any case and spacing (``Zhejiang``, ``Inner Mongolia``, ``Shaanxi``).
Any other value (a province or state abroad, a typo) is kept as written, trimmed: a province is descriptive data,
and a member is not rejected for it.
"""

from __future__ import annotations

import re

# short name, official full name, pinyin / English names
_DIVISIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("北京", "北京市", ("beijing", "peking")),
    ("天津", "天津市", ("tianjin",)),
    ("上海", "上海市", ("shanghai",)),
    ("重庆", "重庆市", ("chongqing",)),
    ("河北", "河北省", ("hebei",)),
    ("山西", "山西省", ("shanxi",)),
    ("辽宁", "辽宁省", ("liaoning",)),
    ("吉林", "吉林省", ("jilin",)),
    ("黑龙江", "黑龙江省", ("heilongjiang",)),
    ("江苏", "江苏省", ("jiangsu",)),
    ("浙江", "浙江省", ("zhejiang",)),
    ("安徽", "安徽省", ("anhui",)),
    ("福建", "福建省", ("fujian",)),
    ("江西", "江西省", ("jiangxi",)),
    ("山东", "山东省", ("shandong",)),
    ("河南", "河南省", ("henan",)),
    ("湖北", "湖北省", ("hubei",)),
    ("湖南", "湖南省", ("hunan",)),
    ("广东", "广东省", ("guangdong",)),
    ("海南", "海南省", ("hainan",)),
    ("四川", "四川省", ("sichuan",)),
    ("贵州", "贵州省", ("guizhou",)),
    ("云南", "云南省", ("yunnan",)),
    ("陕西", "陕西省", ("shaanxi",)),
    ("甘肃", "甘肃省", ("gansu",)),
    ("青海", "青海省", ("qinghai",)),
    ("台湾", "台湾省", ("taiwan",)),
    ("内蒙古", "内蒙古自治区", ("neimenggu", "innermongolia")),
    ("广西", "广西壮族自治区", ("guangxi",)),
    ("西藏", "西藏自治区", ("xizang", "tibet")),
    ("宁夏", "宁夏回族自治区", ("ningxia",)),
    ("新疆", "新疆维吾尔自治区", ("xinjiang",)),
    ("香港", "香港特别行政区", ("hongkong", "xianggang")),
    ("澳门", "澳门特别行政区", ("macau", "macao", "aomen")),
)


def _aliases() -> dict[str, str]:
    aliases: dict[str, str] = {}
    for short, full, latin in _DIVISIONS:
        for name in (short, full, f"{short}省", f"{short}市", f"{short}自治区", *latin):
            aliases[name] = short
    return aliases


_ALIASES = _aliases()
_LATIN_NOISE = re.compile(r"[\s_.-]+|(?:province|sheng|shi|municipality|sar)$")


def province(value: str) -> str:
    """The short name of a Chinese province in any of its usual forms; any other value as written."""
    value = value.strip()
    found = _ALIASES.get(value)
    if found is None and value.isascii():
        found = _ALIASES.get(_LATIN_NOISE.sub("", value.lower()))
    return found or value
