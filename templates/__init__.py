"""loopgate's report templates (Jinja2), shipped in the package as `bot.templates` (see pyproject.toml)."""
