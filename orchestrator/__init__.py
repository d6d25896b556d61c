"""Campaign orchestrator: YAML campaigns -> segment -> offer -> render -> dispatch."""

__version__ = "0.1.0"
