"""``tokenmetry report``: usage tables, CSV/JSON exports and a usage-over-time chart from the ledger."""

from __future__ import annotations

import csv
import json
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from ..ledger import GROUPINGS, LedgerError, Summary, TimeSeries, summarize, usage_over_time
from ._format import count, make_console, money_map

__all__ = ["draw_chart", "parse_time", "report"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
#: PNG text chunk holding the charted numbers, so a chart can be checked against its ledger
CHART_DATA_KEY = "tokenmetry-series"


def parse_time(text: str, *, utc: bool = False, now: float | None = None) -> float:
    """Epoch seconds of ``7d``/``12h``/``30m``/``2w`` ago, ``today``, ``yesterday``, or an ISO date/time.

    Dates and naive times are local time unless ``utc``.

    >>> parse_time("1h", now=7200.0)
    3600.0
    """
    now = time.time() if now is None else now
    value = text.strip().lower()
    match = _RELATIVE.match(value)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    zone = UTC if utc else None
    if value in ("today", "yesterday"):
        current = datetime.fromtimestamp(now, zone)
        midnight = current.replace(hour=0, minute=0, second=0, microsecond=0)
        if value == "yesterday":
            midnight -= timedelta(days=1)
        return midnight.timestamp()
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: use 7d, 12h, 30m, 2w, today, yesterday or an ISO date/time "
                                 "such as 2026-01-31 or 2026-01-31T09:00") from None
    if moment.tzinfo is None and utc:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _ledger_path(given: str | None) -> Path:
    if given:
        return Path(given).expanduser()
    from ..config import resolve
    from ..errors import ConfigError

    try:
        configured = resolve().ledger
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    if not configured:
        raise click.UsageError("no ledger given: pass --ledger PATH or set TOKENMETRY_LEDGER")
    return Path(configured).expanduser()


_CSV_COLUMNS = ("calls", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                "reasoning_tokens", "tool_tokens", "total_tokens", "cost", "currency", "unpriced_calls", "errors",
                "retries", "throttle_wait_s", "first_at", "last_at")


def _csv_values(data: dict[str, Any]) -> list[Any]:
    costs = data["cost"]
    values = []
    for column in _CSV_COLUMNS:
        if column == "cost":
            values.append(";".join(costs[c] for c in sorted(costs)))
        elif column == "currency":
            values.append(";".join(sorted(costs)))
        else:
            value = data[column]
            values.append("" if value is None else value)
    return values


def _write_csv(summary: Summary) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow([*summary.key_names, *_CSV_COLUMNS])
    for row in summary.rows:
        data = row.to_dict(summary.key_names)
        writer.writerow([*row.key, *_csv_values(data)])


def _write_json(summary: Summary, path: Path, since: float | None, until: float | None) -> None:
    def iso(epoch: float | None) -> str | None:
        return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")

    document = {
        "ledger": str(path), "by": summary.by, "since": iso(since), "until": iso(until),
        "rows": [row.to_dict(summary.key_names) for row in summary.rows],
        "totals": summary.totals.to_dict(()),
    }
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _print_table(summary: Summary, path: Path, since: float | None) -> None:
    from rich import box
    from rich.table import Table

    console = make_console()
    window = "" if since is None else f" since {datetime.fromtimestamp(since):%Y-%m-%d %H:%M}"
    table = Table(title=f"Usage by {summary.by}{window} ({path})", box=box.SIMPLE_HEAD, show_footer=True,
                  show_edge=False, pad_edge=False)
    for index, name in enumerate(summary.key_names):
        widest = max([len(name), 5, *(len(row.key[index]) for row in summary.rows)])
        table.add_column(name, footer="total" if index == 0 else "", no_wrap=True, min_width=widest)
    totals = summary.totals
    usage = totals.usage
    numbers = [
        ("calls", lambda r: str(r.calls), str(totals.calls)),
        ("input", lambda r: count(r.usage.input_tokens), count(usage.input_tokens)),
        ("cached", lambda r: count(r.usage.cache_read_tokens), count(usage.cache_read_tokens)),
        ("cache write", lambda r: count(r.usage.cache_write_tokens), count(usage.cache_write_tokens)),
        ("output", lambda r: count(r.usage.output_tokens), count(usage.output_tokens)),
        ("reasoning", lambda r: count(r.usage.reasoning_tokens), count(usage.reasoning_tokens)),
        ("total", lambda r: count(r.usage.total_tokens), count(usage.total_tokens)),
        ("cost", lambda r: money_map(r.cost), money_map(totals.cost)),
    ]
    # rarer columns only when they say something
    if totals.unpriced_calls:
        numbers.append(("unpriced", lambda r: str(r.unpriced_calls), str(totals.unpriced_calls)))
    if totals.errors:
        numbers.append(("errors", lambda r: str(r.errors), str(totals.errors)))
    for title, cell, footer in numbers:
        # figures are never cut: narrow terminals wrap the headers instead
        table.add_column(title, justify="right", footer=footer, no_wrap=True,
                         min_width=max(len(footer), *(len(cell(row)) for row in summary.rows), 1))
    for row in summary.rows:
        table.add_row(*row.key, *(cell(row) for _, cell, _ in numbers))
    if not summary.rows:
        console.print(f"No calls in {path}{window}.", markup=False)
        return
    console.print(table)


def draw_chart(series: TimeSeries, file: Path, title: str) -> None:
    """Two stacked-bar panels, tokens and cost per period, one colour per model; the numbers are also
    stored in the PNG's ``tokenmetry-series`` text chunk."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never a window, works without a display
    import matplotlib.pyplot as plt

    from .. import __version__

    figure, (tokens_axis, cost_axis) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    try:
        positions = list(range(len(series.periods)))
        token_base = [0.0] * len(positions)
        cost_base = [0.0] * len(positions)
        colours = plt.get_cmap("tab10")
        for number, model in enumerate(series.tokens):
            colour = colours(number % 10)
            tokens = [float(v) for v in series.tokens[model]]
            costs = [float(v) for v in series.cost[model]]
            tokens_axis.bar(positions, tokens, bottom=token_base, label=model, color=colour)
            cost_axis.bar(positions, costs, bottom=cost_base, label=model, color=colour)
            token_base = [a + b for a, b in zip(token_base, tokens)]
            cost_base = [a + b for a, b in zip(cost_base, costs)]
        tokens_axis.set_ylabel("tokens (input + output)")
        cost_axis.set_ylabel(f"cost ({series.currency or 'unpriced'})")
        tokens_axis.set_title(title)
        tokens_axis.legend(loc="upper left", fontsize="small")
        cost_axis.set_xlim(-0.75, len(positions) - 0.25)
        cost_axis.set_xticks(positions)
        cost_axis.set_xticklabels(series.periods, rotation=45, ha="right", fontsize="small")
        cost_axis.set_xlabel(series.period)
        for axis in (tokens_axis, cost_axis):
            axis.grid(axis="y", alpha=0.3)
        figure.tight_layout()
        figure.savefig(file, format="png", dpi=100, metadata={
            "Title": title, "Software": f"tokenmetry {__version__}",
            CHART_DATA_KEY: json.dumps(series.to_dict(), separators=(",", ":")),
        })
    finally:
        plt.close(figure)


@click.command()
@click.option("--ledger", "ledger_path", default=None, metavar="PATH",
              help="Ledger file (default: TOKENMETRY_LEDGER or the ledger option of tokenmetry.toml).")
@click.option("--by", type=click.Choice(list(GROUPINGS)), default="model", show_default=True,
              help="Group the calls by model, provider, session, hour, day or week.")
@click.option("--since", default=None, help="Only calls since: 7d, 12h, 30m, 2w, today, yesterday or an ISO date/time.")
@click.option("--until", default=None, help="Only calls before this time (same forms as --since).")
@click.option("--utc", is_flag=True, help="Days, hours and dates in UTC instead of local time.")
@click.option("--format", "output_format", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True, help="Terminal table, or CSV / JSON on standard output.")
@click.option("--chart", type=click.Path(dir_okay=False, writable=True, path_type=Path), default=None,
              metavar="FILE.png", help="Also draw tokens and cost per period and model into this PNG file.")
@click.option("--period", type=click.Choice(["auto", "hour", "day", "week"]), default="auto", show_default=True,
              help="Period of the chart's bars (auto: by the span of the data).")
def report(ledger_path: str | None, by: str, since: str | None, until: str | None, utc: bool, output_format: str,
           chart: Path | None, period: str) -> None:
    """Summarise the usage ledger: tables, CSV/JSON exports and a usage-over-time chart."""
    path = _ledger_path(ledger_path)
    since_s = None if since is None else parse_time(since, utc=utc)
    until_s = None if until is None else parse_time(until, utc=utc)
    try:
        summary = summarize(path, by=by, since=since_s, until=until_s, utc=utc)
        series = None if chart is None else usage_over_time(path, period=period, since=since_s, until=until_s,
                                                            utc=utc)
    except LedgerError as error:
        raise click.ClickException(str(error)) from None
    if output_format == "csv":
        _write_csv(summary)
    elif output_format == "json":
        _write_json(summary, path, since_s, until_s)
    else:
        _print_table(summary, path, since_s)
    if chart is not None and series is not None:
        if not series.periods:
            raise click.ClickException(f"no calls to chart in {path}")
        draw_chart(series, chart, f"tokenmetry usage per {series.period} ({path.name})")
        click.echo(f"Chart written to {chart}", err=output_format != "table")
