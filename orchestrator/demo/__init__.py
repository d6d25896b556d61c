"""The demo generator: the seed shop's members and orders (``orchestrator demo-data``)."""
