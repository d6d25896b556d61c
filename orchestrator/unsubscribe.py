"""Signed unsubscribe links: a link names the customer and channel and carries an HMAC, so nobody can
unsubscribe someone else by editing a URL.

The key comes from ``ORCHESTRATOR_SECRET_KEY``; without it, from a key file created on first use next to the
config (``orchestrator.secret``, readable by its owner only). It is never written in the YAML config.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from urllib.parse import urlencode

SECRET_ENV = "ORCHESTRATOR_SECRET_KEY"
SECRET_FILE = "orchestrator.secret"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def secret_key(base_dir: str | Path, *, create: bool = True) -> bytes:
    """The signing key. With ``create=False`` (a dry run, which writes nothing) a missing key file is not
    created and a throwaway key signs the sample links instead."""
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV].encode()
    path = Path(base_dir) / SECRET_FILE
    if not path.exists() and not create:
        return secrets.token_bytes(32)
    if not path.exists():
        _create_key_file(path)
    return path.read_text().strip().encode()


def _create_key_file(path: Path) -> None:
    """Write the key to a private temporary file, then link it into place: the link is atomic and fails if
    another process got there first, so two processes starting together end up with one key, never an
    empty or half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32))
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass  # another process created it; use theirs
    finally:
        temporary.unlink()


def sign(key: bytes, customer_id: str, channel: str) -> str:
    payload = f"{customer_id}\x1f{channel}".encode()
    mac = hmac.new(key, payload, hashlib.sha256).digest()[:16]
    return f"{_b64(payload)}.{_b64(mac)}"


def verify(key: bytes, token: str) -> tuple[str, str] | None:
    """``(customer_id, channel)`` for a genuine token, None for anything else."""
    try:
        payload_text, mac_text = token.split(".")
        payload = _unb64(payload_text)
        expected = hmac.new(key, payload, hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(expected, _unb64(mac_text)):
            return None
        customer_id, channel = payload.decode().split("\x1f")
    except (ValueError, UnicodeDecodeError):
        return None
    return customer_id, channel


def unsubscribe_url(base_url: str, key: bytes, customer_id: str, channel: str) -> str:
    separator = "&" if "?" in base_url else "?"
    return f"{base_url}{separator}{urlencode({'token': sign(key, customer_id, channel)})}"
