"""Errors shared by every layer. Each names what the user must change."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type or out of range. The message names the key."""


class MissingWeightsError(FileNotFoundError):
    """Model weights are not on disk; the message names the entry and the fetch command."""
