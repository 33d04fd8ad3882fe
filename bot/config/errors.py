"""Errors a user can act on, each carrying the verdict class DESIGN assigns to it."""

from __future__ import annotations


class LoopgateError(Exception):
    """Base: the message is one line, meant for the user as is."""

    kind = "infrastructure"


class ConfigError(LoopgateError):
    """The user must fix the setup: bad config, unknown ref, merge conflict (verdict `error`, exit 2)."""

    kind = "config"


class InfrastructureError(LoopgateError):
    """Nobody's code is to blame: baseline, Envoy, a port, the database (verdict `error`, exit 3)."""

    kind = "infrastructure"


class ChangeError(LoopgateError):
    """The change is wrong: its fork failed to build or start while the baseline is healthy (`fail`)."""

    kind = "change"
