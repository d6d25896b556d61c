"""Signed unsubscribe links: a link names the customer, the channel and the day it was issued, and carries an
HMAC, so nobody can unsubscribe someone else by editing a URL.

The key comes from ``ORCHESTRATOR_SECRET_KEY``; without it, from the key file ``orchestrator.secret`` next to
the config, which only ``orchestrator init`` creates (readable by its owner only). A missing key file is an
error, never silently replaced: every link already sent was signed with it. Keys shorter than
``MIN_KEY_CHARS`` are refused, since a guessable key lets anyone sign links.

Rotation: ``orchestrator init --rotate-key`` moves the key to ``orchestrator.secret.previous`` (one key a line)
and writes a new one; links signed with a previous key still verify until that line is deleted. With the
environment, list previous keys in ``ORCHESTRATOR_PREVIOUS_SECRET_KEYS`` (comma-separated).

Tokens are decoded strictly (unpadded base64url, canonical, nothing else). A token carries its issue time and is
honoured for ``unsubscribe_token_days`` (config). Tokens issued before dates were signed (two fields, no date)
are still honoured while their key is current or previous: they were sent in mail that may be read late, and
honouring an opt-out is never harmful; rotating the key and later dropping it retires them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

from orchestrator.errors import InputError
from orchestrator.output import warn
from orchestrator.timeutil import utcnow

SECRET_ENV = "ORCHESTRATOR_SECRET_KEY"
PREVIOUS_ENV = "ORCHESTRATOR_PREVIOUS_SECRET_KEYS"
SECRET_FILE = "orchestrator.secret"
PREVIOUS_FILE = f"{SECRET_FILE}.previous"
MIN_KEY_CHARS = 32
MAC_BYTES = 16
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_SEPARATOR = "\x1f"
_warned: set[Path] = set()


@dataclass(frozen=True)
class SigningKeys:
    """The key that signs new links, and the previous ones that still verify."""

    current: bytes
    previous: tuple[bytes, ...] = ()

    def all(self) -> tuple[bytes, ...]:
        return (self.current, *self.previous)


@dataclass(frozen=True)
class Token:
    customer_id: str
    channel: str
    issued: datetime | None  # None: a token of the earlier, undated format


def key_path(base_dir: str | Path) -> Path:
    return Path(base_dir) / SECRET_FILE


def load_keys(base_dir: str | Path, *, required: bool = True) -> SigningKeys | None:
    """The keys, checked. A missing key is an ``InputError`` (or None when not ``required``: a dry run)."""
    path = key_path(base_dir)
    if SECRET_ENV in os.environ:
        current = _checked(os.environ[SECRET_ENV], SECRET_ENV)
    elif path.exists():
        _warn_if_shared(path)
        current = _checked(path.read_text(encoding="utf-8"), str(path))
    elif required:
        raise InputError(
            f"the unsubscribe signing key {path} is missing",
            hint=(
                "every unsubscribe link already sent is signed with it: restore the file from a backup (mode 600), "
                f"or set {SECRET_ENV}; only if it is lost for good, run 'orchestrator init' to create a new key "
                "(links sent earlier then stop working)"
            ),
        )
    else:
        return None
    return SigningKeys(current, tuple(_previous_keys(Path(base_dir))))


def _checked(text: str, where: str) -> bytes:
    key = text.strip()
    if len(key) < MIN_KEY_CHARS:
        raise InputError(
            f"{where}: the unsubscribe signing key is too short ({len(key)} characters; at least {MIN_KEY_CHARS}): "
            "anyone could guess it and sign unsubscribe links",
            hint="restore the key from a backup, or create a new one with 'orchestrator init --rotate-key'",
        )
    return key.encode()


def _previous_keys(base_dir: Path) -> list[bytes]:
    keys = [_checked(k, PREVIOUS_ENV) for k in os.environ.get(PREVIOUS_ENV, "").split(",") if k.strip()]
    path = base_dir / PREVIOUS_FILE
    if path.exists():
        _warn_if_shared(path)
        lines = path.read_text(encoding="utf-8").splitlines()
        keys += [_checked(line, f"{path}:{n}") for n, line in enumerate(lines, 1) if line.strip()]
    return keys


def _warn_if_shared(path: Path) -> None:
    if path in _warned or not stat.S_IMODE(path.stat().st_mode) & 0o077:
        return
    _warned.add(path)
    warn(f"warning: {path} is readable by other users; run: chmod 600 {path}")


def create_key(base_dir: str | Path) -> bool:
    """Create the key file if there is none; True when created. An existing key is checked, never replaced."""
    path = key_path(base_dir)
    if path.exists():
        _warn_if_shared(path)
        _checked(path.read_text(encoding="utf-8"), str(path))
        return False
    _write_private(path, secrets.token_urlsafe(32) + "\n")
    return True


def rotate_key(base_dir: str | Path) -> Path:
    """Append the current key to the previous keys, then write a new key; returns the previous-keys file."""
    path = key_path(base_dir)
    old = _checked(path.read_text(encoding="utf-8"), str(path)).decode() if path.exists() else None
    previous = Path(base_dir) / PREVIOUS_FILE
    if old is not None:
        kept = previous.read_text(encoding="utf-8") if previous.exists() else ""
        _replace_private(previous, kept + ("" if not kept or kept.endswith("\n") else "\n") + old + "\n")
    _replace_private(path, secrets.token_urlsafe(32) + "\n")
    return previous


def _write_private(path: Path, text: str) -> None:
    """Write to a private temporary file, then link it into place: the link is atomic and fails if another
    process got there first, so two processes starting together end up with one key, never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass  # another process created it; use theirs
    finally:
        temporary.unlink()


def _replace_private(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)


# --- tokens ----------------------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Strict: unpadded base64url only, and the canonical spelling (unused low bits zero)."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not canonical base64url")
    return data


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()[:MAC_BYTES]


def sign(key: bytes, customer_id: str, channel: str, issued: datetime | None = None) -> str:
    seconds = int((issued or utcnow()).timestamp())
    payload = _SEPARATOR.join((customer_id, channel, str(seconds))).encode()
    return f"{_b64(payload)}.{_b64(_mac(key, payload))}"


def verify(keys: SigningKeys, token: str) -> Token | None:
    """The token's content when it is genuine (signed by the current or a previous key), else None."""
    try:
        payload_text, mac_text = token.split(".")
        payload, mac = _unb64(payload_text), _unb64(mac_text)
    except ValueError:
        return None
    if len(mac) != MAC_BYTES or not any(hmac.compare_digest(_mac(key, payload), mac) for key in keys.all()):
        return None
    try:
        fields = payload.decode().split(_SEPARATOR)
    except UnicodeDecodeError:
        return None
    if len(fields) == 2:
        return Token(fields[0], fields[1], None)
    if len(fields) == 3 and fields[2].isdigit():
        return Token(fields[0], fields[1], datetime.fromtimestamp(int(fields[2]), UTC))
    return None


def unsubscribe_url(base_url: str, key: bytes, customer_id: str, channel: str) -> str:
    separator = "&" if "?" in base_url else "?"
    return f"{base_url}{separator}{urlencode({'token': sign(key, customer_id, channel)})}"


def service_url(public_url: str, key: bytes, customer_id: str, channel: str) -> str:
    """The link to the service's own unsubscribe page, ``<public_url>/u/<token>`` (``orchestrator serve``)."""
    return f"{public_url.rstrip('/')}/u/{sign(key, customer_id, channel)}"
