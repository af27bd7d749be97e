"""tokenmetry's own exceptions. Instrumentation never raises these into an SDK call;
they answer mistakes made with tokenmetry's own API (bad config, bad arguments, budgets)."""

from __future__ import annotations

from typing import Any

__all__ = ["TokenmetryError", "ConfigError", "BudgetExceeded"]


class TokenmetryError(Exception):
    """Base class of every error tokenmetry raises on purpose."""


class ConfigError(TokenmetryError, ValueError):
    """A configuration value is invalid: names the source, the key, the value and what is accepted."""

    def __init__(self, source: str, key: str, value: Any, accepted: str) -> None:
        self.source = source
        self.key = key
        self.value = value
        self.accepted = accepted
        super().__init__(f"{source}: {key}={value!r} is not valid; accepted: {accepted}")


class BudgetExceeded(TokenmetryError):
    """A session's budget would be passed by the next call; nothing was sent."""

    def __init__(self, message: str, *, used: Any = None, would_add: Any = None, limit: Any = None,
                 kind: str = "tokens") -> None:
        self.used = used
        self.would_add = would_add
        self.limit = limit
        self.kind = kind
        super().__init__(message)
