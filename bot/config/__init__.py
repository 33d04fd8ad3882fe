"""Configuration: the `.loopgate.yml` schema and loader, app settings, and the errors they raise."""

from bot.config.errors import ChangeError, ConfigError, InfrastructureError, LoopgateError
from bot.config.loader import load_config, parse_config
from bot.config.schema import CONFIG_FILE, Config, Service, Suite
from bot.config.settings import AppSettings, RuntimeSettings

__all__ = [
    "CONFIG_FILE",
    "AppSettings",
    "ChangeError",
    "Config",
    "ConfigError",
    "InfrastructureError",
    "LoopgateError",
    "RuntimeSettings",
    "Service",
    "Suite",
    "load_config",
    "parse_config",
]
