"""The campaign language: schema, condition trees, and the YAML loader with positions for errors."""
