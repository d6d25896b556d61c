"""What HTTP channels share: a setting that must be an http(s) URL, and one kept-alive client per channel."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import httpx
from pydantic import AfterValidator


def http_url(value: str) -> str:
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("expected an http:// or https:// URL with a host")
    return value


#: a pydantic field type: an http:// or https:// URL with a host
HttpUrl = Annotated[str, AfterValidator(http_url)]


class KeptAliveClient:
    """One ``httpx.Client``, made on first use and kept, so a channel's connections live across messages and
    batches; redirects are not followed (a provider that moved is a configuration problem, not a success)."""

    def __init__(self, timeout: float, headers: Mapping[str, str] | None = None):
        self.timeout = timeout
        self.headers = dict(headers or {})
        self._client: httpx.Client | None = None

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                headers=self.headers, timeout=httpx.Timeout(self.timeout), follow_redirects=False
            )
        return self._client

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
