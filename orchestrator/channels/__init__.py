"""Channel infrastructure, one folder as APScheduler gives each component kind: ``base`` is the contract every
channel implements, ``settings`` reads a channel's own block of the config, ``http`` is what HTTP providers share,
``outbox`` writes messages to files when no provider is configured.

Plugins import these through ``orchestrator.api``; the engine imports the modules themselves.
"""
