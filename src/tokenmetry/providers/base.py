"""What a provider adapter declares: endpoints, and how to read facts into a Call.

An adapter never imports OpenTelemetry and never touches sinks: it reads requests, responses and
chunks into the :class:`~tokenmetry.call.Call` that the lifecycle hands it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..call import Call

__all__ = ["Endpoint", "Target", "Patch"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One token-producing API operation and its readers."""

    operation: str  # gen_ai.operation.name
    read_response: Callable[[Call, Any], None]
    read_chunk: Callable[[Call, Any], bool] | None = None  # False: withhold the chunk from the user
    # called with (call, request body) before the request is sent; may return a replacement body
    prepare: Callable[[Call, Mapping[str, Any]], Mapping[str, Any] | None] | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """Where a client sends its calls: the provider name and server of gen_ai / server.* attributes."""

    provider: str
    server_address: str | None
    server_port: int | None


@dataclass(frozen=True, slots=True)
class Patch:
    """One attribute replaced by instrument(): ``owner.name`` wrapped by ``wrapper``."""

    owner: Any
    name: str
    wrapper: Callable[..., Any]
