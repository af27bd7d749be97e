"""``tokenmetry price``: the cost of a usage on a model, or the model's prices."""

from __future__ import annotations

import json
from typing import Any

import click

from ._format import money

__all__ = ["price"]


@click.command()
@click.option("--model", "-m", required=True, help="Model id (dated ids and vendor prefixes are matched).")
@click.option("--input", "input_tokens", type=click.IntRange(0), default=None,
              help="Input tokens, cached ones included (as the vendors' usage reports them).")
@click.option("--output", "output_tokens", type=click.IntRange(0), default=0, show_default=True,
              help="Output tokens, reasoning included.")
@click.option("--cached", type=click.IntRange(0), default=None, help="Input tokens read from the prompt cache.")
@click.option("--cache-write", type=click.IntRange(0), default=None, help="Input tokens written to the cache.")
@click.option("--reasoning", type=click.IntRange(0), default=None, help="Reasoning tokens (part of --output).")
@click.option("--provider", default=None, help="Provider, when the model id alone is ambiguous (e.g. azure.ai.openai).")
@click.option("--currency", default=None, help="Currency (needs a rate in TOKENMETRY_CURRENCY_RATES unless USD).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def price(model: str, input_tokens: int | None, output_tokens: int, cached: int | None, cache_write: int | None,
          reasoning: int | None, provider: str | None, currency: str | None, as_json: bool) -> None:
    """Price a usage on MODEL, or with no --input show the model's prices per million tokens.

    \b
    tokenmetry price -m gpt-4o --input 12000 --cached 8000 --output 900
    tokenmetry price -m claude-sonnet-4-5
    """
    from ..config import resolve
    from ..errors import TokenmetryError
    from ..pricing import price as price_usage
    from ..pricing import price_info
    from ..usage import Usage

    try:
        options = resolve({"currency": currency} if currency else {})
    except TokenmetryError as error:
        raise click.ClickException(str(error)) from None
    if input_tokens is None:
        if any(v is not None for v in (cached, cache_write, reasoning)) or output_tokens:
            raise click.UsageError("give --input with the other token counts")
        info = price_info(model, provider)
        if info is None:
            raise click.ClickException(f"no price is known for {model!r}")
        if as_json:
            click.echo(json.dumps({"model": model, **info}))
            return
        click.echo(f"{model} → {info['provider_id']}/{info['model_id']} (USD per million tokens)")
        for name, value in info["prices_per_million"].items():
            if value is not None:
                click.echo(f"  {name}: {value if not isinstance(value, list) else _tiers(value)}")
        return
    if (cached or 0) + (cache_write or 0) > input_tokens:
        raise click.UsageError("--cached and --cache-write are parts of --input: they cannot exceed it")
    if (reasoning or 0) > output_tokens:
        raise click.UsageError("--reasoning is part of --output: it cannot exceed it")
    usage = Usage(input_tokens, output_tokens, cached, cache_write, reasoning)
    try:
        cost = price_usage(model, usage, provider=provider, options=options)
    except TokenmetryError as error:
        raise click.ClickException(str(error)) from None
    if cost is None:
        raise click.ClickException(f"no price is known for {model!r}" + (
            f" in {options.currency} (no currency rate)" if options.currency != "USD" else ""))
    if as_json:
        click.echo(json.dumps({"model": model, "usage": usage.to_dict(), "cost": cost.to_dict()}))
        return
    click.echo(f"{money(cost.amount, cost.currency)} for {usage.total_tokens} tokens on {model} ({cost.source})")
    for part in ("input", "cache_read", "cache_write", "output"):
        value = getattr(cost, part)
        if value is not None:
            click.echo(f"  {part.replace('_', ' ')}: {money(value, cost.currency)}")


def _tiers(value: list[Any]) -> str:
    base, tiers = value
    return f"{base}, " + ", ".join(f"{price} above {start} input tokens" for start, price in tiers.items())
