"""SMS text rules as pure functions: segment counting (GSM-7 vs UCS-2), signature and opt-out wording.

Segment counting follows GSM 03.38 / 3GPP 23.038 as carriers bill it:

* a text made only of the GSM-7 basic set counts one septet per character, the extension table
  (``^ { } \\ [ ~ ] | €`` and form feed) two (escape plus the character); up to 160 septets is one segment,
  a longer text is split into parts of 153 (7 septets go to the concatenation header);
* any other character (Chinese, most emoji, curly quotes) makes the whole text UCS-2: UTF-16 code units are
  counted (an emoji outside the BMP is a surrogate pair, two units); up to 70 is one segment, else parts of 67.

Signature and opt-out: ``with_signature("您好", "【某网店】")`` gives ``【某网店】您好`` (never twice);
``with_opt_out("您好。", "回T退订")`` gives ``您好。回T退订`` and ``with_opt_out("您好", "回T退订")`` ``您好 回T退订``
(directly after full-width punctuation, after a space otherwise).
"""

from __future__ import annotations

import math
import string
import unicodedata
from dataclasses import dataclass

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67

DEFAULT_OPT_OUT_TEXT = "回T退订"
DEFAULT_OPT_OUT_KEYWORDS = ("T", "TD", "STOP", "UNSUBSCRIBE", "退订", "N")


@dataclass(frozen=True)
class SegmentCount:
    segments: int
    encoding: str  # "GSM-7" or "UCS-2"
    chars: int  # characters as a person counts them (code points)
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2): what the segment limits apply to

    def measures(self) -> dict[str, object]:
        return {"sms_segments": self.segments, "encoding": self.encoding, "chars": self.chars}


def gsm7_septets(text: str) -> int | None:
    """Septets the text takes in GSM-7, or None if a character is outside the GSM-7 tables."""
    septets = 0
    for char in text:
        if char in GSM7_BASIC:
            septets += 1
        elif char in GSM7_EXTENSION:
            septets += 2
        else:
            return None
    return septets


def count_segments(text: str) -> SegmentCount:
    septets = gsm7_septets(text)
    if septets is not None:
        segments = 1 if septets <= GSM7_SINGLE else math.ceil(septets / GSM7_PART)
        return SegmentCount(segments, "GSM-7", len(text), septets)
    units = len(text.encode("utf-16-le")) // 2
    segments = 1 if units <= UCS2_SINGLE else math.ceil(units / UCS2_PART)
    return SegmentCount(segments, "UCS-2", len(text), units)


def is_cjk(char: str) -> bool:
    """A Chinese / Japanese / Korean character or full-width punctuation: text that needs no word spaces."""
    if not char:
        return False
    code = ord(char)
    return (
        0x2E80 <= code <= 0x9FFF  # radicals, CJK punctuation, kana, unified ideographs
        or 0xAC00 <= code <= 0xD7AF  # Hangul
        or 0xF900 <= code <= 0xFAFF  # compatibility ideographs
        or 0xFE30 <= code <= 0xFE4F  # CJK compatibility forms
        or 0xFF00 <= code <= 0xFFEF  # full-width forms (，！：)
        or 0x20000 <= code <= 0x3FFFF  # extension ideographs
    )


def with_signature(text: str, signature: str | None) -> str:
    if not signature or text.startswith(signature):
        return text
    return signature + text


def with_opt_out(text: str, opt_out: str | None) -> str:
    """``text`` with the opt-out wording at the end unless it already says it anywhere.

    After full-width punctuation (``。！，``) the wording follows directly, as Chinese SMS are written; after
    anything else (a Chinese word, a Latin word, a coupon code) a space keeps it apart, so that "回T退订" is
    never read as part of the last sentence.
    """
    if not opt_out or opt_out in text:
        return text
    text = text.rstrip()
    if not text:
        return opt_out
    last = text[-1]
    closed = is_cjk(last) and unicodedata.category(last).startswith("P")
    return text + opt_out if closed else f"{text} {opt_out}"


_EDGE_PUNCTUATION = string.whitespace + string.punctuation + "。，！？；：、…～"


def normalise_reply(text: str) -> str:
    """A reply as keywords are compared: full-width folded to half-width (NFKC), trimmed of spaces and
    punctuation people add ("退订。", " ｔｄ "), upper case."""
    return unicodedata.normalize("NFKC", text).strip(_EDGE_PUNCTUATION).upper()
