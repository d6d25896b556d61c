"""Channel infrastructure, one folder as APScheduler gives each component kind: ``base`` is the contract every
channel implements, ``settings`` reads a channel's own block of the config, ``http`` is what HTTP providers share,
``outbox`` writes messages to files when no provider is configured.

Plugins import these through ``orchestrator.api``; the names of ``base`` are re-exported here for the engine.
"""

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
    own_config,
)

__all__ = [
    "DISPATCH_KEYS",
    "Channel",
    "CompiledMessage",
    "MessageOptions",
    "OutgoingMessage",
    "RenderedMessage",
    "SendResult",
    "SendStatus",
    "http_result",
    "own_config",
]
