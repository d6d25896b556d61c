"""The wiring between configuration, plugins, templates and the pipeline, shared by the CLI and the scheduler."""

from __future__ import annotations

import secrets
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from orchestrator.campaign.loader import CampaignLoader, CampaignPlan, StepPlan
from orchestrator.channels.base import Channel, MessageOptions
from orchestrator.config import Settings
from orchestrator.offers import Grant, OfferKind
from orchestrator.output import warn
from orchestrator.pipeline import CampaignRunner
from orchestrator.plugin_manager import Registry, registry
from orchestrator.progress import SILENT, Progress
from orchestrator.rendering import TemplateLoader
from orchestrator.shared_values import SharedValues
from orchestrator.template_context import synthetic_context
from orchestrator.unsubscribe import key_path, load_keys, service_url, unsubscribe_url


class Orchestrator:
    def __init__(self, settings: Settings, engine: Engine | None = None, plugins: Registry | None = None):
        self.settings = settings
        self.engine = engine
        self.registry = plugins or registry()
        self.progress: Progress = SILENT  # the command line sets bars when someone watches

    @cached_property
    def templates(self) -> TemplateLoader:
        return TemplateLoader.from_settings(self.settings)

    def channel(self, name: str) -> Channel:
        if name not in self._channels:
            channel = self.registry.channels[name](self.settings.channels.get(name, {}), self.settings)
            if self.engine is not None:  # what the channel shares with other processes lives in this database
                channel.shared_values = SharedValues(self.engine)
            self._channels[name] = channel
        return self._channels[name]

    @cached_property
    def _channels(self) -> dict[str, Channel]:
        return {}

    def _compile_message(self, channel_name: str, options: MessageOptions, campaign_file: str, has_offer: bool):
        """Compile a step's message and render it once against a synthetic customer: template mistakes are
        found here, at validate / dry-run time, never half-way through a send."""
        channel = self.channel(channel_name)
        compiled = channel.compile(options, self.templates.for_campaign(campaign_file))
        channel.render(compiled, synthetic_context(has_offer=has_offer))
        return compiled

    @cached_property
    def loader(self) -> CampaignLoader:
        return CampaignLoader(
            facts=self.registry.facts,
            channels=self.registry.channels,
            named_segments=self.settings.segments,
            named_segments_doc=self.settings.document,
            compile_message=self._compile_message,
            offers=self.registry.offers,
            settings=self.settings,
        )

    def load(self, path: str | Path) -> CampaignPlan:
        return self.loader.load(path)

    def _signing_key(self, dry_run: bool) -> bytes:
        """A run needs the key; a dry run uses it when present, else a throwaway key, and says so."""
        keys = load_keys(self.settings.base_dir, required=not dry_run)
        if keys is not None:
            return keys.current
        warn(
            f"note: no signing key ({key_path(self.settings.base_dir)}): the sample unsubscribe links are signed "
            "with a throwaway key and will not work; run 'orchestrator init' to create the key"
        )
        return secrets.token_bytes(32)

    def runner(self, plan: CampaignPlan, *, dry_run: bool = False) -> CampaignRunner:
        stages = [*plan.steps, *(f.step for f in plan.follow_ups)]  # a follow-up is decided like a step
        channels = {name: self.channel(name) for step in stages for name in step.messages}
        offers: dict[tuple, OfferKind] = {}
        for step in stages:
            for kind, options in (step.offer or {}).items():
                offers[(step.index, kind)] = self.registry.offers[kind](options, self.settings, step)
            for variant in step.variants:  # a variant's own offer: (step index, kind, variant name)
                for kind, options in (variant.offer or {}).items():
                    offer = self.registry.offers[kind](options, self.settings, variant.site)
                    offers[(step.index, kind, variant.name)] = offer
        key = self._signing_key(dry_run)
        base_url = self.settings.unsubscribe_url
        # the service's own page once it has a public address, unless the shop named another page explicitly
        public_url = self.settings.serve.public_url if "unsubscribe_url" not in self.settings.model_fields_set else None

        def build_context(
            customer: dict[str, Any], step: StepPlan, channel: str, grant: Grant | None, at: datetime
        ) -> dict[str, Any]:
            """The template context; the same shape as ``template_context.synthetic_context``."""
            return {
                "customer": customer,
                "offer": dict(grant.context) if grant else None,
                "campaign": {"name": plan.name, "description": plan.campaign.description or ""},
                "step": {"name": step.name},
                "now": at,
                "unsubscribe_url": (
                    service_url(public_url, key, customer["customer_id"], channel)
                    if public_url
                    else unsubscribe_url(base_url, key, customer["customer_id"], channel)
                ),
            }

        runner = CampaignRunner(self.engine, self.settings, plan, channels, offers, build_context, self.registry)
        runner.progress = self.progress
        return runner
