"""The ``coupon`` channel: the coupon itself is the message, put in the member's wallet.

``message: {coupon: {}}`` (optionally ``{text: ...}`` for the wallet entry). Nothing is sent to an address, so no
contact consent is needed, but suppression still applies, and the channel is not counted by frequency caps.
The coupon offer itself (terms, budgets, codes) is core: ``orchestrator.coupons``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from orchestrator.api import Channel, CompiledMessage, MessageOptions, RenderedMessage, SendResult, hookimpl


class WalletOptions(MessageOptions):
    """``message: {coupon: {}}``: the coupon itself is the message; an optional text for the wallet entry."""


class CouponChannel(Channel):
    """Puts the coupon in the member's account: nothing is sent to an address, so no contact consent is needed,
    but suppression still applies (the channel is skipped for suppressed members like any other)."""

    name = "coupon"
    contact_field = "customer_id"
    consent = None
    options_model = WalletOptions
    is_message = False  # nothing reaches the member's inbox: not limited by, nor counted in, frequency caps
    facts_through_templates = True  # render reads facts only through its templates
    idempotent_by_key = True  # sending records the coupon in the ledger only: nothing to duplicate

    def compile(self, options: WalletOptions, templates: Any) -> CompiledMessage:
        text = options.text or "{{ offer.description }}"
        return CompiledMessage(self.name, options, {"text": templates.from_string(text, label="coupon text")})

    def render(self, compiled: CompiledMessage, context: Mapping[str, Any]) -> RenderedMessage:
        offer = context.get("offer") or {}
        return RenderedMessage(
            self.name, {"text": compiled.templates["text"].render(context), "code": str(offer.get("code", ""))}
        )

    def send(self, messages) -> Iterator[SendResult]:
        for message in messages:
            yield SendResult.sent(provider_id=message.message.parts["code"] or None)


@hookimpl
def register_channels():
    return [CouponChannel]
