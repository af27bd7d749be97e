"""The ``tokenmetry`` command: ``demo``, ``report``, ``diagnostics``, ``count`` and ``price``.

Each command lives in its own module and imports what it needs (vendor SDKs, matplotlib, the
tokenizers, the price data) only when it runs.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["cli", "main"]

_COMMANDS = {
    "demo": ("tokenmetry.cli.demo", "demo"),
    "report": ("tokenmetry.cli.report", "report"),
    "diagnostics": ("tokenmetry.cli.diagnostics", "diagnostics"),
    "count": ("tokenmetry.cli.count", "count"),
    "price": ("tokenmetry.cli.price", "price"),
}


def _build() -> Any:
    import importlib

    import click

    from .. import __version__

    class LazyGroup(click.Group):
        """Loads a command's module only when that command runs (or help lists it)."""

        def list_commands(self, ctx: click.Context) -> list[str]:
            return list(_COMMANDS)

        def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
            found = _COMMANDS.get(name)
            if found is None:
                return None
            module, attribute = found
            return getattr(importlib.import_module(module), attribute)  # type: ignore[no-any-return]

    @click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="tokenmetry")
    def group() -> None:
        """Exact token usage, cost, latency, retries and rate-limit waits of LLM SDK calls."""

    return group


def __getattr__(name: str) -> Any:
    if name == "cli":
        return _build()
    raise AttributeError(name)


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``tokenmetry`` script."""
    try:
        group = _build()
    except ImportError as error:
        sys.stderr.write(f"tokenmetry: the command line needs its extra packages ({error}).\n"
                         "Install them with: pip install 'tokenmetry[cli]'\n")
        return 1
    return group.main(args=argv, prog_name="tokenmetry")
