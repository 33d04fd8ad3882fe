"""The App's HTTP server: webhooks in, evidence out."""

from bot.server.app import create_app
from bot.server.metrics import Metrics

__all__ = ["Metrics", "create_app"]
