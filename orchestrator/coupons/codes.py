"""Coupon codes: unguessable, unambiguous when read aloud or typed, and self-checking.

A code is ``CODE_LENGTH`` characters from ``ALPHABET`` drawn with ``secrets`` (about 54 bits of randomness) plus
one check character computed with the Luhn mod N algorithm, which detects every single-character mistake and
every swap of two adjacent characters except 2<->Z (the first and last of the alphabet, as 0<->9 in decimal
Luhn). The alphabet leaves out 0/O, 1/I/L and U (look-alikes, and no accidental words). Codes are shown in groups
of four (``7KQM-X2PD-9RT3``); dashes, spaces and case are ignored on input.
"""

from __future__ import annotations

import secrets

ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 11  # random characters; with the check character a code has 12
_INDEX = {c: i for i, c in enumerate(ALPHABET)}
N = len(ALPHABET)


def check_character(body: str) -> str:
    """Luhn mod N over ``body`` (characters of ``ALPHABET``)."""
    factor = 2
    total = 0
    for char in reversed(body):
        addend = factor * _INDEX[char]
        factor = 1 if factor == 2 else 2
        total += addend // N + addend % N
    return ALPHABET[(N - total % N) % N]


_SPACE = N**CODE_LENGTH


def new_code() -> str:
    number = secrets.randbelow(_SPACE)  # uniform over all bodies, one call to the system's CSPRNG
    chars = []
    for _ in range(CODE_LENGTH):
        number, digit = divmod(number, N)
        chars.append(ALPHABET[digit])
    body = "".join(chars)
    return body + check_character(body)


def normalise(text: str) -> str:
    """Upper case without separators: what the customer typed, as stored."""
    return "".join(ch for ch in text.upper() if ch not in "- \t")


def is_well_formed(code: str) -> bool:
    """Right length, right alphabet, right check character (a typo is caught before any lookup)."""
    return len(code) == CODE_LENGTH + 1 and all(ch in _INDEX for ch in code) and check_character(code[:-1]) == code[-1]


def display(code: str) -> str:
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))
