"""``channels.sms``: the SMS channel's own settings, read once for the channel and for the reply import."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator_plugins.sms.text import DEFAULT_OPT_OUT_KEYWORDS, DEFAULT_OPT_OUT_TEXT
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.api import load_channel_config

DEFAULT_OUTBOX = "outbox/sms"
CONFIG_HINT = "keys: outbox, signature, opt_out_text, opt_out_keywords, gateway (and the dispatcher's rate_limit, …)"


class SmsConfig(BaseModel):
    """``channels.sms``."""

    model_config = ConfigDict(extra="forbid")

    outbox: str = DEFAULT_OUTBOX
    signature: str | None = None
    opt_out_text: str | None = DEFAULT_OPT_OUT_TEXT
    opt_out_keywords: list[str] = Field(default_factory=lambda: list(DEFAULT_OPT_OUT_KEYWORDS), min_length=1)
    gateway: Any = None


def load_config(raw: Mapping[str, Any] | None, settings: Any) -> SmsConfig:
    return load_channel_config(SmsConfig, raw or {}, settings, ("channels", "sms"), CONFIG_HINT)
