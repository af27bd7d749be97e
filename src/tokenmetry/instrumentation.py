"""instrument(), uninstrument(), wrap(), and the OpenTelemetry instrumentor entry point."""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Collection, Iterable
from typing import Any

from .call import logger, recorder
from .config import resolve
from .errors import ConfigError, TokenmetryError
from .providers import ADAPTERS, ALIASES, PACKAGES, load_adapter
from .providers.base import Patch

__all__ = ["instrument", "uninstrument", "wrap", "instrumented", "TokenmetryInstrumentor"]

_lock = threading.RLock()
# (owner, attribute name) -> the original attribute, exactly as found in owner.__dict__
_originals: dict[tuple[Any, str], Any] = {}
_active: set[str] = set()
_wanted: set[str] = set()  # installed SDKs to patch when the application imports them
_hooked: set[str] = set()  # providers with an import hook registered (wrapt keeps hooks for good)
_helpers: set[str] = set()  # providers whose stream helpers' close() is hooked for wrap()ped clients


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

    An SDK already imported is patched at once; one installed but not yet imported is patched the
    moment the application imports it, so ``instrument()`` never pays for importing SDKs the
    application does not use. Options are keyword arguments (see :mod:`tokenmetry.config`), which win
    over ``TOKENMETRY_*`` environment variables and the TOML file. Returns the providers instrumented
    now or on import.

    >>> import tokenmetry
    >>> tokenmetry.instrument()  # doctest: +SKIP
    ['anthropic', 'google_genai', 'openai']
    """
    names = _provider_names(providers)
    resolved = resolve(options)
    with _lock:
        recorder.configure(resolved)
        for name in names:
            if name in _active or name in _wanted:
                continue
            package = PACKAGES[name]
            if package in sys.modules:
                _patch_provider(name)
            elif _installed(package):
                _wanted.add(name)
                _hook_import(name, package)
        from .exporters import setup_from_options

        setup_from_options(resolved)
        return sorted(_active | _wanted)


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def _patch_provider(name: str) -> None:
    adapter = load_adapter(name)
    if adapter is None or not adapter.available():
        return
    for patch in adapter.patches():
        _apply(patch)
    _active.add(name)
    for module_name, patches_of in getattr(adapter, "deferred_patches", lambda: [])():
        _hook_module(name, module_name, patches_of)


def _hook_module(name: str, module_name: str, patches_of: Any) -> None:
    """Patch a module of an instrumented SDK when the application imports it (helper classes)."""
    import wrapt

    if module_name in _hooked:
        return
    _hooked.add(module_name)

    def on_import(module: Any) -> None:
        with _lock:
            if name in _active or name in _helpers:  # uninstrument() may have come first
                try:
                    for patch in patches_of(module):
                        _apply(patch)
                except Exception:
                    logger.warning("tokenmetry: could not instrument %s on import", module_name, exc_info=True)

    wrapt.register_post_import_hook(on_import, module_name)


def _hook_import(name: str, package: str) -> None:
    import wrapt

    if name in _hooked:
        return
    _hooked.add(name)

    def on_import(module: Any) -> None:
        with _lock:
            if name in _wanted:  # still wanted: uninstrument() may have come first
                _wanted.discard(name)
                try:
                    _patch_provider(name)
                except Exception:
                    logger.warning("tokenmetry: could not instrument %s on import", package, exc_info=True)

    wrapt.register_post_import_hook(on_import, package)


def _hook_helpers(name: str, adapter: Any) -> None:
    """Hook the SDK's stream helpers' ``close()`` for a wrapped client: leaving a helper's ``with``
    block early then accounts its call at once, not when the stream is garbage-collected. The hooks
    act only on streams tokenmetry tracks; :func:`uninstrument` removes them."""
    if name in _helpers or name in _active:
        return
    _helpers.add(name)
    for patch in getattr(adapter, "helper_patches", list)():
        _apply(patch)
    for module_name, patches_of in getattr(adapter, "deferred_patches", list)():
        _hook_module(name, module_name, patches_of)


def uninstrument() -> None:
    """Restore every patched attribute exactly as it was (and forget SDKs awaiting their import)."""
    with _lock:
        for (owner, name), original in reversed(list(_originals.items())):
            setattr(owner, name, original)
        _originals.clear()
        _active.clear()
        _wanted.clear()
        _helpers.clear()


def instrumented() -> list[str]:
    """The providers instrumented by :func:`instrument`: patched now, or on their SDK's import."""
    with _lock:
        return sorted(_active | _wanted)


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
            _hook_helpers(name, adapter)  # again after uninstrument() removed them
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
