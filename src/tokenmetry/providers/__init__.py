"""Provider adapters, one module per vendor SDK. Adding a vendor is adding a module here and a line
to ``ADAPTERS``: the call lifecycle, sessions, statistics and telemetry are shared."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ADAPTERS", "ALIASES", "PACKAGES", "all_patches", "load_adapter"]

# provider name -> module holding ``adapter``
ADAPTERS: dict[str, str] = {
    "openai": "tokenmetry.providers.openai",
    "anthropic": "tokenmetry.providers.anthropic",
    "google_genai": "tokenmetry.providers.google_genai",
}
# provider name -> the SDK package it instruments
PACKAGES: dict[str, str] = {"openai": "openai", "anthropic": "anthropic", "google_genai": "google.genai"}
ALIASES = {"gemini": "google_genai", "google-genai": "google_genai", "google": "google_genai",
           "vertex": "google_genai"}


def load_adapter(name: str) -> Any | None:
    """The adapter for ``name`` when its module exists (the SDK itself may still be missing)."""
    try:
        module = importlib.import_module(ADAPTERS[name])
    except ModuleNotFoundError as error:
        if error.name and error.name.startswith("tokenmetry"):
            return None
        raise
    return module.adapter


def all_patches(adapter: Any) -> list[Any]:
    """Every patch point of an adapter, including those deferred until their module is imported
    (this imports those modules: for diagnostics, not for instrument())."""
    patches = list(adapter.patches())
    for module_name, patches_of in getattr(adapter, "deferred_patches", lambda: [])():
        patches.extend(patches_of(importlib.import_module(module_name)))
    return patches
