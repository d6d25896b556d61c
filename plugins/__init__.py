"""Built-in plugins, installed as ``orchestrator_plugins``; loaded exactly as third-party plugins are."""
