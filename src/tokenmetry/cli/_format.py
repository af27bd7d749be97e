"""Shared presentation helpers of the command line: consoles, numbers, money."""

from __future__ import annotations

import os
import sys
from decimal import Decimal
from typing import Any, TextIO

from ..usage import Cost, Usage

__all__ = ["USAGE_COLUMNS", "average", "count", "make_console", "money", "money_map", "usage_fields"]

#: the usage figures every table shows, in order: (column title, Usage attribute)
USAGE_COLUMNS = (
    ("input", "input_tokens"),
    ("cached", "cache_read_tokens"),
    ("output", "output_tokens"),
    ("reasoning", "reasoning_tokens"),
    ("total", "total_tokens"),
)
_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}


def make_console(file: TextIO | None = None) -> Any:
    """A rich Console; off a terminal it is 120 columns wide (or ``$COLUMNS``) and has no colour."""
    from rich.console import Console

    file = file or sys.stdout
    width = None
    if not file.isatty() and not os.environ.get("COLUMNS"):
        width = 120
    return Console(file=file, width=width, highlight=False, soft_wrap=False)


def money(amount: Decimal | None, currency: str = "USD") -> str:
    """An exact amount: ``$0.00000555``, ``0.12 EUR``; ``n/a`` when unknown."""
    if amount is None:
        return "n/a"
    text = f"{amount.normalize():f}" if amount else "0"
    symbol = _SYMBOLS.get(currency)
    return f"{symbol}{text}" if symbol else f"{text} {currency}"


def money_map(costs: dict[str, Decimal]) -> str:
    """Totals per currency (the ledger's sums), ``n/a`` when nothing was priced."""
    if not costs:
        return "n/a"
    return " + ".join(money(amount, currency) for currency, amount in sorted(costs.items()))


def cost_text(cost: Cost | None) -> str:
    return "n/a" if cost is None else money(cost.amount, cost.currency)


def count(value: int | None) -> str:
    """A token count; ``-`` when the vendor did not report it."""
    return "-" if value is None else str(value)


def average(total: float | None, n: int) -> str:
    """``total / n`` with one decimal; ``-`` when unknown or n is 0."""
    if total is None or n == 0:
        return "-"
    return f"{total / n:.1f}"


def usage_fields(usage: Usage) -> list[tuple[str, int | None]]:
    """(title, value) for each of :data:`USAGE_COLUMNS`."""
    return [(title, getattr(usage, attribute)) for title, attribute in USAGE_COLUMNS]
