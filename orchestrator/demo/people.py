"""Who a demo member is: name, gender, birthday, phone, e-mail, WeChat openid, home province and city.

Every function takes the caller's ``random.Random`` so that one seed fixes every byte of the output. Uniqueness of
phones and e-mails is kept with a set that is only ever tested for membership (never iterated), so it cannot make
the output depend on hash order.
"""

from __future__ import annotations

import base64
import bisect
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Generic, TypeVar

from orchestrator.demo.tables import (
    EMAIL_DOMAINS,
    GIVEN_FEMALE,
    GIVEN_MALE,
    MOBILE_PREFIXES,
    PROVINCES,
    QQ_DOMAIN,
    SURNAMES,
    TIMEZONES,
)

T = TypeVar("T")


class Picker(Generic[T]):
    """A weighted choice with the cumulative weights computed once: ``rng.choices`` rebuilds them on every call."""

    def __init__(self, items: Sequence[T], weights: Sequence[float]):
        if len(items) != len(weights) or not items:
            raise ValueError("a picker needs as many weights as items, and at least one")
        self.items = tuple(items)
        self.cum = list(itertools.accumulate(weights))
        self.total = self.cum[-1]

    def __call__(self, rng: random.Random) -> T:
        return self.items[bisect.bisect_right(self.cum, rng.random() * self.total)]

    @classmethod
    def of(cls, pairs: Sequence[tuple[T, float]]) -> Picker[T]:
        return cls([p[0] for p in pairs], [p[1] for p in pairs])


@dataclass(frozen=True, slots=True)
class Person:
    name: str
    pinyin: tuple[str, str]  # (surname, given name) in pinyin, for e-mail local parts
    gender: str  # "female" | "male" | "" (not given)
    birthday: date | None


_SURNAME = Picker([(s, p) for s, p, _ in SURNAMES], [w for _, _, w in SURNAMES])
_GIVEN = {"male": Picker.of([(c, 1.0) for c in GIVEN_MALE]), "female": Picker.of([(c, 1.0) for c in GIVEN_FEMALE])}
_PREFIX = Picker.of(MOBILE_PREFIXES)
_DOMAIN = Picker.of(EMAIL_DOMAINS)
_TIMEZONE = Picker.of(TIMEZONES)
_CITY = [Picker.of(cities) for _, _, cities in PROVINCES]
# age at the reference time: young adults dominate an online shop's members, a tail reaches 70
_AGE_BANDS = Picker.of([((18, 25), 20.0), ((26, 35), 35.0), ((36, 45), 25.0), ((46, 55), 12.0), ((56, 70), 8.0)])


def province_weights() -> list[float]:
    return [weight for _, weight, _ in PROVINCES]


def province_name(index: int) -> str:
    return PROVINCES[index][0]


def city(rng: random.Random, province: int) -> str:
    return _CITY[province](rng)


def person(rng: random.Random, today: date) -> Person:
    """A Chinese name (surname + one or two characters), a gender for ~97 %, a birthday for ~93 %."""
    roll = rng.random()
    gender = "female" if roll < 0.52 else "male"
    surname, surname_py = _SURNAME(rng)
    chars = [_GIVEN[gender](rng) for _ in range(1 if rng.random() < 0.3 else 2)]
    given = "".join(c for c, _ in chars)
    given_py = "".join(p for _, p in chars)
    shown_gender = "" if rng.random() < 0.03 else gender
    return Person(surname + given, (surname_py, given_py), shown_gender, _birthday(rng, today))


def _birthday(rng: random.Random, today: date) -> date | None:
    if rng.random() < 0.07:
        return None
    low, high = _AGE_BANDS(rng)
    age_days = int((low + rng.random() * (high - low + 1)) * 365.2425)
    return today - timedelta(days=age_days)


def unique_phone(rng: random.Random, taken: set[str]) -> str:
    """An 11-digit mainland mobile number (as shops export them), not given to anyone before."""
    while True:
        number = f"{_PREFIX(rng)}{rng.randrange(100_000_000):08d}"
        if number not in taken:
            taken.add(number)
            return number


def unique_email(rng: random.Random, who: Person, taken: set[str]) -> str:
    """A pinyin-ish address such as ``zhangwei88@163.example.com`` or a QQ number at qq, not used before."""
    domain = _DOMAIN(rng)
    while True:
        local = _qq_number(rng) if domain == QQ_DOMAIN and rng.random() < 0.6 else _pinyin_local(rng, who)
        address = f"{local}@{domain}"
        if address not in taken:
            taken.add(address)
            return address
        domain = _DOMAIN(rng)


def _qq_number(rng: random.Random) -> str:
    digits = rng.choice((6, 7, 8, 9, 9, 10, 10))
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


def _pinyin_local(rng: random.Random, who: Person) -> str:
    surname, given = who.pinyin
    year = who.birthday.year if who.birthday else 1990 + rng.randrange(10)
    style = rng.randrange(6)
    if style == 0:
        return f"{surname}{given}{rng.randrange(10, 1000)}"
    if style == 1:
        return f"{given}.{surname}{year % 100:02d}"
    if style == 2:
        return f"{surname}{given}{year}"
    if style == 3:
        return f"{surname}_{given}{rng.randrange(1, 100)}"
    if style == 4:
        return f"{surname[0]}{given}{rng.randrange(100, 100_000)}"
    return f"{given}{surname}{rng.randrange(1, 10_000)}"


def wechat_openid(rng: random.Random) -> str:
    """An official-account openid lookalike: ``o`` + 27 URL-safe characters (random, so unique in practice)."""
    raw = rng.getrandbits(168).to_bytes(21, "big")
    return "o" + base64.urlsafe_b64encode(raw).decode("ascii")[:27]


def timezone(rng: random.Random) -> str:
    return _TIMEZONE(rng)
