"""The public API for plugins: the one module a plugin imports from.

Everything a channel, offer, fact or command plugin needs is named here; the engine's other modules are internal
and may change between releases. The built-in plugins in ``orchestrator_plugins`` import only from this module,
exactly as a third-party plugin would. ``docs/plugins.md`` documents each name.
"""

from __future__ import annotations

from orchestrator.campaign.catalog import FactParam, FactSpec
from orchestrator.channels import outbox
from orchestrator.channels.base import (
    DISPATCH_KEYS,
    Channel,
    CompiledMessage,
    MessageOptions,
    OutgoingMessage,
    RenderedMessage,
    SendResult,
    SendStatus,
    http_result,
)
from orchestrator.channels.http import HttpUrl, KeptAliveClient, http_url
from orchestrator.channels.settings import load_channel_config, missing_setting
from orchestrator.data.csvfile import CsvSource
from orchestrator.data.records import phone as phone_parser
from orchestrator.data.spreadsheet import spreadsheet_cell
from orchestrator.db.models import SUPPRESSION_REASONS
from orchestrator.errors import InputError, InputErrors, RuntimeFailure
from orchestrator.facts import customers as customers_table
from orchestrator.facts import orders as orders_table
from orchestrator.hookspecs import hookimpl
from orchestrator.ledger import delivery_key, parse_delivery_key
from orchestrator.offers import Grant, OfferKind, Withheld
from orchestrator.output import emit_json
from orchestrator.rendering import CompiledTemplate, TemplateLoader, synthetic_context
from orchestrator.shared_values import SharedValue, SharedValues
from orchestrator.suppressions import add as add_suppression
from orchestrator.suppressions import resolve as suppression_target
from orchestrator.template_context import mask_phone
from orchestrator.timeutil import parse_datetime, to_utc, utcnow

__all__ = [
    "DISPATCH_KEYS",
    "SUPPRESSION_REASONS",
    "Channel",
    "CompiledMessage",
    "CompiledTemplate",
    "CsvSource",
    "FactParam",
    "FactSpec",
    "Grant",
    "HttpUrl",
    "InputError",
    "InputErrors",
    "KeptAliveClient",
    "MessageOptions",
    "OfferKind",
    "OutgoingMessage",
    "RenderedMessage",
    "RuntimeFailure",
    "SendResult",
    "SendStatus",
    "SharedValue",
    "SharedValues",
    "TemplateLoader",
    "Withheld",
    "add_suppression",
    "customers_table",
    "delivery_key",
    "emit_json",
    "hookimpl",
    "http_result",
    "http_url",
    "load_channel_config",
    "mask_phone",
    "missing_setting",
    "orders_table",
    "outbox",
    "parse_datetime",
    "parse_delivery_key",
    "phone_parser",
    "spreadsheet_cell",
    "suppression_target",
    "synthetic_context",
    "to_utc",
    "utcnow",
]
