"""Reference tables for the demo data: Chinese surnames and given names with pinyin, provinces and cities.

Hand-written rather than taken from Faker so the demo needs no extra dependency and its bytes never change when
a third-party table does. Weights are rough real-world frequencies (surnames per hundred people, provinces as an
online shop's member base would spread); they only need to look plausible, not be census-exact.
"""

from __future__ import annotations

# (surname, pinyin for e-mail local parts, weight)
SURNAMES: tuple[tuple[str, str, float], ...] = (
    ("王", "wang", 7.1), ("李", "li", 7.0), ("张", "zhang", 6.8), ("刘", "liu", 5.4), ("陈", "chen", 4.5),
    ("杨", "yang", 3.1), ("黄", "huang", 2.2), ("赵", "zhao", 2.0), ("吴", "wu", 2.0), ("周", "zhou", 1.9),
    ("徐", "xu", 1.5), ("孙", "sun", 1.5), ("马", "ma", 1.4), ("朱", "zhu", 1.3), ("胡", "hu", 1.3),
    ("郭", "guo", 1.2), ("何", "he", 1.2), ("高", "gao", 1.1), ("林", "lin", 1.1), ("罗", "luo", 0.9),
    ("郑", "zheng", 0.9), ("梁", "liang", 0.9), ("谢", "xie", 0.8), ("宋", "song", 0.8), ("唐", "tang", 0.8),
    ("许", "xu", 0.7), ("韩", "han", 0.7), ("冯", "feng", 0.7), ("邓", "deng", 0.7), ("曹", "cao", 0.7),
    ("彭", "peng", 0.6), ("曾", "zeng", 0.6), ("肖", "xiao", 0.6), ("田", "tian", 0.6), ("董", "dong", 0.5),
    ("袁", "yuan", 0.5), ("潘", "pan", 0.5), ("于", "yu", 0.5), ("蒋", "jiang", 0.5), ("蔡", "cai", 0.5),
    ("余", "yu", 0.5), ("杜", "du", 0.5), ("叶", "ye", 0.4), ("程", "cheng", 0.4), ("苏", "su", 0.4),
    ("魏", "wei", 0.4), ("吕", "lv", 0.4), ("丁", "ding", 0.4), ("任", "ren", 0.4), ("沈", "shen", 0.4),
    ("姚", "yao", 0.3), ("卢", "lu", 0.3), ("姜", "jiang", 0.3), ("崔", "cui", 0.3), ("钟", "zhong", 0.3),
    ("谭", "tan", 0.3), ("陆", "lu", 0.3), ("汪", "wang", 0.3), ("范", "fan", 0.3), ("金", "jin", 0.3),
    ("石", "shi", 0.3), ("廖", "liao", 0.3), ("贾", "jia", 0.3), ("夏", "xia", 0.3), ("韦", "wei", 0.2),
    ("付", "fu", 0.2), ("方", "fang", 0.2), ("白", "bai", 0.2), ("邹", "zou", 0.2), ("孟", "meng", 0.2),
    ("熊", "xiong", 0.2), ("秦", "qin", 0.2), ("邱", "qiu", 0.2), ("江", "jiang", 0.2), ("尹", "yin", 0.2),
    ("薛", "xue", 0.2), ("段", "duan", 0.2), ("雷", "lei", 0.2), ("侯", "hou", 0.2), ("龙", "long", 0.2),
    ("史", "shi", 0.2), ("陶", "tao", 0.2), ("黎", "li", 0.2), ("贺", "he", 0.2), ("顾", "gu", 0.2),
    ("毛", "mao", 0.2), ("郝", "hao", 0.2), ("龚", "gong", 0.2), ("邵", "shao", 0.2), ("万", "wan", 0.2),
    ("钱", "qian", 0.2), ("严", "yan", 0.2), ("武", "wu", 0.2), ("戴", "dai", 0.2), ("孔", "kong", 0.1),
    ("汤", "tang", 0.1), ("欧阳", "ouyang", 0.05), ("司马", "sima", 0.02), ("上官", "shangguan", 0.01),
)  # fmt: skip

# (character, pinyin) used in given names, by the gender they are most typical of
GIVEN_MALE: tuple[tuple[str, str], ...] = (
    ("伟", "wei"), ("强", "qiang"), ("磊", "lei"), ("军", "jun"), ("洋", "yang"), ("勇", "yong"), ("杰", "jie"),
    ("涛", "tao"), ("明", "ming"), ("超", "chao"), ("刚", "gang"), ("平", "ping"), ("辉", "hui"), ("鹏", "peng"),
    ("华", "hua"), ("飞", "fei"), ("鑫", "xin"), ("波", "bo"), ("斌", "bin"), ("宇", "yu"), ("浩", "hao"),
    ("凯", "kai"), ("健", "jian"), ("俊", "jun"), ("帆", "fan"), ("帅", "shuai"), ("旭", "xu"), ("宁", "ning"),
    ("龙", "long"), ("林", "lin"), ("阳", "yang"), ("建", "jian"), ("国", "guo"), ("文", "wen"), ("博", "bo"),
    ("志", "zhi"), ("晨", "chen"), ("子", "zi"), ("轩", "xuan"), ("睿", "rui"), ("泽", "ze"), ("毅", "yi"),
    ("峰", "feng"), ("海", "hai"), ("东", "dong"), ("亮", "liang"), ("成", "cheng"), ("天", "tian"),
    ("振", "zhen"), ("嘉", "jia"), ("航", "hang"), ("宏", "hong"), ("金", "jin"), ("永", "yong"),
)  # fmt: skip
GIVEN_FEMALE: tuple[tuple[str, str], ...] = (
    ("芳", "fang"), ("娜", "na"), ("敏", "min"), ("静", "jing"), ("丽", "li"), ("艳", "yan"), ("娟", "juan"),
    ("霞", "xia"), ("秀", "xiu"), ("玲", "ling"), ("婷", "ting"), ("雪", "xue"), ("慧", "hui"), ("莹", "ying"),
    ("琳", "lin"), ("颖", "ying"), ("倩", "qian"), ("洁", "jie"), ("晶", "jing"), ("佳", "jia"), ("欣", "xin"),
    ("怡", "yi"), ("萍", "ping"), ("红", "hong"), ("梅", "mei"), ("燕", "yan"), ("兰", "lan"), ("琴", "qin"),
    ("云", "yun"), ("蕾", "lei"), ("薇", "wei"), ("璐", "lu"), ("瑶", "yao"), ("雅", "ya"), ("诗", "shi"),
    ("梦", "meng"), ("涵", "han"), ("悦", "yue"), ("彤", "tong"), ("可", "ke"), ("思", "si"), ("晓", "xiao"),
    ("雨", "yu"), ("月", "yue"), ("丹", "dan"), ("露", "lu"), ("妍", "yan"), ("婉", "wan"), ("青", "qing"),
    ("文", "wen"), ("佩", "pei"), ("琪", "qi"),
)  # fmt: skip

# Provinces with a weight (share of the member base) and real cities with weights. Municipalities are their own
# city. 浙江, 四川 and 山东 are the seed shop's best-converting provinces (see demo_plan.TOP_PROVINCES).
PROVINCES: tuple[tuple[str, float, tuple[tuple[str, float], ...]], ...] = (
    ("广东", 12.5, (("广州", 30), ("深圳", 30), ("东莞", 10), ("佛山", 10), ("珠海", 5), ("汕头", 5), ("惠州", 5),
                    ("中山", 5))),
    ("江苏", 9.0, (("南京", 25), ("苏州", 25), ("无锡", 15), ("常州", 10), ("南通", 10), ("徐州", 8), ("扬州", 7))),
    ("浙江", 7.5, (("杭州", 35), ("宁波", 20), ("温州", 15), ("绍兴", 10), ("嘉兴", 8), ("金华", 7), ("台州", 5))),
    ("山东", 7.0, (("青岛", 30), ("济南", 25), ("烟台", 12), ("潍坊", 12), ("临沂", 10), ("淄博", 6), ("济宁", 5))),
    ("河南", 6.0, (("郑州", 40), ("洛阳", 15), ("南阳", 10), ("新乡", 10), ("许昌", 9), ("开封", 8), ("商丘", 8))),
    ("四川", 6.0, (("成都", 60), ("绵阳", 10), ("德阳", 8), ("宜宾", 8), ("南充", 7), ("泸州", 7))),
    ("上海", 6.0, (("上海", 1),)),
    ("北京", 5.5, (("北京", 1),)),
    ("湖北", 4.5, (("武汉", 55), ("宜昌", 12), ("襄阳", 12), ("荆州", 8), ("十堰", 7), ("黄石", 6))),
    ("湖南", 4.0, (("长沙", 45), ("株洲", 12), ("衡阳", 12), ("岳阳", 11), ("湘潭", 10), ("常德", 10))),
    ("河北", 4.0, (("石家庄", 30), ("唐山", 20), ("保定", 18), ("廊坊", 12), ("邯郸", 12), ("秦皇岛", 8))),
    ("福建", 4.0, (("福州", 30), ("厦门", 30), ("泉州", 25), ("漳州", 8), ("莆田", 7))),
    ("安徽", 3.5, (("合肥", 45), ("芜湖", 15), ("蚌埠", 10), ("安庆", 10), ("马鞍山", 10), ("阜阳", 10))),
    ("辽宁", 3.0, (("沈阳", 40), ("大连", 35), ("鞍山", 10), ("锦州", 8), ("抚顺", 7))),
    ("陕西", 3.0, (("西安", 70), ("咸阳", 12), ("宝鸡", 10), ("榆林", 8))),
    ("重庆", 2.8, (("重庆", 1),)),
    ("江西", 2.2, (("南昌", 45), ("赣州", 20), ("九江", 15), ("上饶", 10), ("景德镇", 10))),
    ("广西", 2.2, (("南宁", 40), ("柳州", 25), ("桂林", 20), ("北海", 15))),
    ("天津", 2.0, (("天津", 1),)),
    ("云南", 1.8, (("昆明", 60), ("大理", 15), ("曲靖", 15), ("玉溪", 10))),
    ("黑龙江", 1.8, (("哈尔滨", 60), ("大庆", 20), ("齐齐哈尔", 20))),
)  # fmt: skip

# Mainland mobile prefixes (China Mobile, Unicom, Telecom); every one is valid for phonenumbers with 8 more digits.
MOBILE_PREFIXES: tuple[tuple[str, float], ...] = (
    ("134", 3), ("135", 5), ("136", 5), ("137", 5), ("138", 6), ("139", 6), ("147", 1), ("150", 3), ("151", 3),
    ("152", 3), ("157", 2), ("158", 3), ("159", 3), ("178", 2), ("182", 3), ("183", 2), ("184", 1), ("187", 3),
    ("188", 3), ("198", 2), ("130", 3), ("131", 3), ("132", 3), ("145", 1), ("155", 2), ("156", 3), ("166", 2),
    ("175", 1), ("176", 2), ("185", 3), ("186", 4), ("133", 3), ("153", 2), ("173", 2), ("177", 2), ("180", 3),
    ("181", 2), ("189", 3), ("191", 1), ("199", 2),
)  # fmt: skip

# Mail providers common in China and abroad, under example.com (RFC 2606): the addresses look like a real member
# base (qq, 163, …) but no demo campaign can ever mail a stranger by accident.
EMAIL_DOMAINS: tuple[tuple[str, float], ...] = (
    ("qq.example.com", 34), ("163.example.com", 20), ("126.example.com", 8), ("foxmail.example.com", 5),
    ("sina.example.com", 5), ("139.example.com", 5), ("gmail.example.com", 7), ("outlook.example.com", 7),
    ("icloud.example.com", 5), ("hotmail.example.com", 2), ("yeah.example.com", 2),
)  # fmt: skip
QQ_DOMAIN = "qq.example.com"

TIMEZONES: tuple[tuple[str, float], ...] = (
    ("Asia/Shanghai", 984), ("Asia/Hong_Kong", 5), ("Asia/Singapore", 3), ("America/Los_Angeles", 3),
    ("Europe/London", 2), ("America/New_York", 2), ("Australia/Sydney", 1),
)  # fmt: skip
