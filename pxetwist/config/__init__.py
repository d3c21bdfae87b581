"""The one YAML file pxetwist runs from: located loading, validation and frozen values."""

from pxetwist.config.errors import ConfigError
from pxetwist.config.load import load_config, parse_config
from pxetwist.config.model import Config

__all__ = ["Config", "ConfigError", "load_config", "parse_config"]
