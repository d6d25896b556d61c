"""Coupon codes (``orchestrator.coupons.codes``): unique, well-formed, self-checking, readable.

The check character is verified against an independent Luhn mod N written here from the algorithm's definition
(double every second character from the right, add the base-N digits of each product, the check makes the sum
a multiple of N), not by calling the module's own helper.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from itertools import combinations

import pytest

from orchestrator.coupons import codes

LOOK_ALIKES = "0O1ILU"
SHAPE = re.compile(rf"[{re.escape(codes.ALPHABET)}]{{12}}")
N = len(codes.ALPHABET)


def luhn_sum(code: str) -> int:
    """Luhn mod N over a whole code (check character included): factor 1 on the last character, 2 on the one
    before it, alternating leftwards; each product contributes the sum of its base-N digits."""
    total = 0
    for position, char in enumerate(reversed(code)):
        product = codes.ALPHABET.index(char) * (2 if position % 2 else 1)
        total += sum(divmod(product, N))
    return total


def independently_valid(code: str) -> bool:
    return len(code) == 12 and all(ch in codes.ALPHABET for ch in code) and luhn_sum(code) % N == 0


def with_check(body: str) -> str:
    """The code for ``body``: the one check character that makes the Luhn sum a multiple of N, found by trying."""
    (code,) = [body + ch for ch in codes.ALPHABET if luhn_sum(body + ch) % N == 0]
    return code


@pytest.fixture(scope="module")
def sample() -> list[str]:
    return [codes.new_code() for _ in range(300)]


def test_the_alphabet_has_no_look_alikes():
    alphabet = codes.ALPHABET
    assert len(alphabet) == len(set(alphabet)) == 30
    assert not set(LOOK_ALIKES) & set(alphabet)
    assert set(alphabet) == set("23456789ABCDEFGHJKMNPQRSTVWXYZ")
    # upper-case letters and digits only: what a customer types is the same in any case
    assert all(ch.isdigit() or (ch.isascii() and ch.isupper()) for ch in alphabet)


def test_a_million_codes_are_unique_and_well_formed():
    many = [codes.new_code() for _ in range(1_000_000)]
    assert len(set(many)) == len(many)
    assert all(SHAPE.fullmatch(code) for code in many)
    assert all(map(codes.is_well_formed, many))
    # the check character, against the independent computation, on a slice of them
    assert all(independently_valid(code) for code in many[:20_000])
    # every character of the alphabet is drawn, about equally often (11 random characters a code)
    counts = Counter("".join(code[:-1] for code in many))
    assert set(counts) == set(codes.ALPHABET)
    expected = 11 * len(many) / N
    assert all(abs(n - expected) < 6 * expected**0.5 for n in counts.values()), counts
    # and the first and last random positions are uniform too (no bias from turning one number into digits)
    for position in (0, 10):
        at = Counter(code[position] for code in many)
        mean = len(many) / N
        assert all(abs(n - mean) < 6 * mean**0.5 for n in at.values()), (position, at)


def test_check_character_matches_luhn_mod_n(sample: list[str]):
    for code in sample:
        assert independently_valid(code), code
        assert codes.check_character(code[:-1]) == code[-1] == with_check(code[:-1])[-1]
    # a few bodies written out, including the extremes of the alphabet
    for body in ("2" * 11, "Z" * 11, "23456789ABC", "ZYXWVTSRQPN", "7KQMX2PD9RT"):
        assert codes.check_character(body) == with_check(body)[-1]
        assert codes.is_well_formed(with_check(body))


def test_every_single_character_substitution_is_caught(sample: list[str]):
    for code in sample:
        for position in range(len(code)):
            for char in codes.ALPHABET:
                if char == code[position]:
                    continue
                typo = code[:position] + char + code[position + 1 :]
                assert not codes.is_well_formed(typo), (code, typo)
                assert not independently_valid(typo)


def test_adjacent_transpositions_are_caught_except_2_and_z(sample: list[str]):
    for code in sample:
        for i in range(len(code) - 1):
            a, b = code[i], code[i + 1]
            if a == b:
                continue
            swapped = code[:i] + b + a + code[i + 2 :]
            assert codes.is_well_formed(swapped) == ({a, b} == {"2", "Z"}), (code, swapped)
    # exhaustively: every pair of distinct characters, at every adjacent pair of positions of a code
    rng = random.Random(20250701)
    for a, b in combinations(codes.ALPHABET, 2):
        for i in range(11):  # positions i and i + 1 of the 12 characters, the check character included
            filler = "".join(rng.choice(codes.ALPHABET) for _ in range(11))
            code = with_check(filler[:i] + a + b + filler[i + 2 :]) if i < 10 else ending_with(a, b, filler)
            assert code[i : i + 2] == a + b and independently_valid(code)
            swapped = code[:i] + b + a + code[i + 2 :]
            documented = {a, b} == {"2", "Z"}
            assert codes.is_well_formed(swapped) == documented, (code, swapped)
            assert independently_valid(swapped) == documented


def ending_with(last: str, check: str, filler: str) -> str:
    """A code whose last body character is ``last`` and whose check character is ``check``: the first character
    runs through the alphabet, and each choice gives a different check character (the Luhn weights permute)."""
    for first in codes.ALPHABET:
        code = first + filler[1:10] + last
        if codes.check_character(code) == check:
            return code + check
    raise AssertionError(f"no body ending in {last} has check character {check}")


def test_malformed_codes_are_rejected(sample: list[str]):
    code = sample[0]
    assert codes.is_well_formed(code)
    assert not codes.is_well_formed(code[:-1])  # too short
    assert not codes.is_well_formed(code + "2")  # too long
    assert not codes.is_well_formed("")
    for look_alike in LOOK_ALIKES + "o-":
        assert not codes.is_well_formed(look_alike + code[1:])
    assert not codes.is_well_formed(code.lower())  # stored codes are normalised: upper case


def test_display_and_normalise_round_trip(sample: list[str]):
    for code in sample:
        shown = codes.display(code)
        assert shown == f"{code[0:4]}-{code[4:8]}-{code[8:12]}"
        assert codes.normalise(shown) == code
        assert codes.normalise(shown.lower()) == code
        assert codes.normalise(f"  {code[:4].lower()} {code[4:8]}\t{code[8:].lower()} ") == code
        assert codes.normalise(code) == code
        assert codes.is_well_formed(codes.normalise(shown.lower()))
    assert codes.display("7KQMX2PD9RT3") == "7KQM-X2PD-9RT3"
    assert codes.normalise("7kqm-x2pd 9rt3") == "7KQMX2PD9RT3"
