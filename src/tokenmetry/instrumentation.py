"""instrument(), uninstrument(), wrap(), and the OpenTelemetry instrumentor entry point."""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable
from typing import Any

from .call import logger, recorder
from .config import resolve
from .errors import ConfigError, TokenmetryError
from .providers import ADAPTERS, ALIASES, load_adapter
from .providers.base import Patch

__all__ = ["instrument", "uninstrument", "wrap", "instrumented", "TokenmetryInstrumentor"]

_lock = threading.RLock()
# (owner, attribute name) -> the original attribute, exactly as found in owner.__dict__
_originals: dict[tuple[Any, str], Any] = {}
_active: set[str] = set()


def _provider_names(providers: Iterable[str] | str | None) -> list[str]:
    if providers is None:
        return list(ADAPTERS)
    if isinstance(providers, str):
        providers = [providers]
    names = []
    for given in providers:
        name = ALIASES.get(str(given).lower(), str(given).lower())
        if name not in ADAPTERS:
            raise ConfigError("keyword arguments", "providers", given,
                              "a list of " + ", ".join([*ADAPTERS, *ALIASES]))
        names.append(name)
    return names


def _apply(patch: Patch) -> None:
    import wrapt

    key = (patch.owner, patch.name)
    if key in _originals:
        return
    original = patch.owner.__dict__[patch.name]
    _originals[key] = original
    setattr(patch.owner, patch.name, wrapt.FunctionWrapper(original, patch.wrapper))


def instrument(providers: Iterable[str] | str | None = None, **options: Any) -> list[str]:
    """Instrument every installed SDK (or the named ones). Idempotent; does no network I/O.

    Options are keyword arguments (see :mod:`tokenmetry.config`), which win over ``TOKENMETRY_*``
    environment variables and the TOML file. Returns the providers now instrumented.

    >>> import tokenmetry
    >>> tokenmetry.instrument()  # doctest: +SKIP
    ['openai', 'anthropic', 'google_genai']
    """
    names = _provider_names(providers)
    resolved = resolve(options)
    with _lock:
        recorder.configure(resolved)
        for name in names:
            if name in _active:
                continue
            adapter = load_adapter(name)
            if adapter is None or not adapter.available():
                continue
            for patch in adapter.patches():
                _apply(patch)
            _active.add(name)
        from .exporters import setup_from_options

        setup_from_options(resolved)
        return sorted(_active)


def uninstrument() -> None:
    """Restore every patched attribute exactly as it was."""
    with _lock:
        for (owner, name), original in reversed(list(_originals.items())):
            setattr(owner, name, original)
        _originals.clear()
        _active.clear()


def instrumented() -> list[str]:
    """The providers currently instrumented by :func:`instrument`."""
    with _lock:
        return sorted(_active)


def wrap(client: Any) -> Any:
    """Instrument one client instance only (sync or async, any supported vendor); returns it.

    >>> client = tokenmetry.wrap(openai.OpenAI())  # doctest: +SKIP
    """
    # try the adapter of the client's own package first: loading the others imports their SDKs
    package = type(client).__module__.split(".", 1)[0]
    names = sorted(ADAPTERS, key=lambda name: 0 if name.split("_", 1)[0] == package else 1)
    for name in names:
        adapter = load_adapter(name)
        if adapter is None or not adapter.available() or not adapter.owns(client):
            continue
        with _lock:
            if client.__dict__.get("_tokenmetry_wrapped"):
                return client
            adapter.wrap_client(client)
            client.__dict__["_tokenmetry_wrapped"] = True
        return client
    raise TokenmetryError(f"tokenmetry.wrap: {type(client).__module__}.{type(client).__qualname__} is not a "
                          "client of a supported SDK (openai, anthropic, google-genai)")


class TokenmetryInstrumentor:
    """Found by ``opentelemetry-instrument`` through the ``opentelemetry_instrumentor`` entry point."""

    _instance: TokenmetryInstrumentor | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> TokenmetryInstrumentor:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def instrument(self, **kwargs: Any) -> None:
        options = {k: v for k, v in kwargs.items() if k in ("tracer_provider", "meter_provider")}
        try:
            instrument(**options)
        except TokenmetryError:
            logger.exception("tokenmetry: auto-instrumentation failed")

    def uninstrument(self, **kwargs: Any) -> None:
        uninstrument()

    @property
    def is_instrumented_by_opentelemetry(self) -> bool:
        return bool(instrumented())
