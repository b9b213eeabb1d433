"""Exceptions shared by both services: one base class, specific subclasses."""

from __future__ import annotations


class BisectError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(BisectError):
    """A setting is missing or invalid; the message names the variable."""


class DatabaseUnavailable(BisectError):
    """The database server cannot be reached (down, restarting, network)."""


class SchemaError(BisectError):
    """The database lacks a table or column the code needs."""


class ValidationError(BisectError):
    """Input that breaks a rule; ``field`` names what was wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
