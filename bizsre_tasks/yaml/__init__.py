"""The bundled Bi-ZsRE task YAMLs (an lm-eval task plugin package: see pyproject.toml)."""
