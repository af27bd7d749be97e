"""``tokenmetry report``: every --by and --format against sums of the ledger's records, and the chart."""

from __future__ import annotations

import csv
import io
import json
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from click.testing import CliRunner

import tokenmetry
from tokenmetry import ledger
from tokenmetry.cli import cli
from tokenmetry.cli._format import money
from tokenmetry.cli.report import CHART_DATA_KEY, parse_time
from tokenmetry.ledger import Ledger
from tokenmetry.testing import LocalAPIServer, Reply
from tokenmetry.usage import CallRecord

BASE = datetime(2026, 3, 1, 9, 0, tzinfo=UTC).timestamp()
HOUR = 3600.0


@pytest.fixture(autouse=True)
def close_ledger() -> Iterator[None]:
    yield
    ledger.close()


@pytest.fixture
def records(tmp_path: Path) -> list[CallRecord]:
    """Real calls (two vendors' endpoints, three models, two sessions, an error, an unpriced model),
    placed on three UTC days."""
    with LocalAPIServer() as server:
        tokenmetry.instrument(providers=["openai"])
        client = server.openai_client(max_retries=0)
        azure = server.azure_openai_client(max_retries=0)
        server.enqueue("openai.chat", Reply(usage={"prompt_tokens_details": {"cached_tokens": 4},
                                                   "completion_tokens_details": {"reasoning_tokens": 2}}))
        with tokenmetry.session("s-one") as one:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "a b c"}])
            client.chat.completions.create(model="gpt-4.1-mini", messages=[{"role": "user", "content": "d e"}])
            azure.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "f g h i"}])
        with tokenmetry.session("s-two") as two:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "j k"}])
            server.enqueue("openai.chat", Reply(status=400))
            with pytest.raises(openai.BadRequestError):
                client.chat.completions.create(model="gpt-4.1-mini", messages=[{"role": "user", "content": "x"}])
            client.chat.completions.create(model="unpriced-model-x", messages=[{"role": "user", "content": "y z"}])
            client.chat.completions.create(model="gpt-4.1-mini", messages=[{"role": "user", "content": "l m n o"}])
    made = sorted([*one.calls, *two.calls], key=lambda r: r.started_at)
    assert len(made) == 7
    offsets = [0, 2 * HOUR, 25 * HOUR, 26 * HOUR, 27 * HOUR, 49 * HOUR, 50 * HOUR]
    placed = [replace(record, started_at=BASE + offset) for record, offset in zip(made, offsets)]
    Ledger(tmp_path / "usage.db").write(placed)
    return placed


def run(*args: str) -> Any:
    result = CliRunner().invoke(cli, ["report", *args], env={"COLUMNS": "200", "TOKENMETRY_LEDGER": None})
    return result


KEYS: dict[str, Callable[[CallRecord], tuple[str, ...]]] = {
    "model": lambda r: (r.provider, r.response_model or r.request_model or "unknown"),
    "provider": lambda r: (r.provider,),
    "session": lambda r: (r.session_id,),
    "day": lambda r: (datetime.fromtimestamp(r.started_at, UTC).strftime("%Y-%m-%d"),),
}
KEY_NAMES = {"model": ["provider", "model"], "provider": ["provider"], "session": ["session"], "day": ["day"]}


def optional_sum(values: list[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def group(records: list[CallRecord], by: str) -> dict[tuple[str, ...], dict[str, Any]]:
    """What each row of the report must say, summed here from the records themselves."""
    groups: dict[tuple[str, ...], list[CallRecord]] = {}
    for record in records:
        groups.setdefault(KEYS[by](record), []).append(record)
    result = {}
    for key, members in groups.items():
        costs: dict[str, Decimal] = {}
        for r in members:
            if r.cost is not None:
                costs[r.cost.currency] = costs.get(r.cost.currency, Decimal(0)) + r.cost.amount
        result[key] = {
            "calls": len(members),
            "input_tokens": sum(r.usage.input_tokens for r in members),
            "output_tokens": sum(r.usage.output_tokens for r in members),
            "cache_read_tokens": optional_sum([r.usage.cache_read_tokens for r in members]),
            "cache_write_tokens": optional_sum([r.usage.cache_write_tokens for r in members]),
            "reasoning_tokens": optional_sum([r.usage.reasoning_tokens for r in members]),
            "tool_tokens": optional_sum([r.usage.tool_tokens for r in members]),
            "total_tokens": sum(r.usage.total_tokens for r in members),
            "cost": costs,
            "unpriced_calls": sum(1 for r in members if r.cost is None and r.usage.total_tokens > 0),
            "errors": sum(1 for r in members if r.error_type is not None),
            "retries": sum(r.retries for r in members),
            "throttle_wait_s": sum(r.throttle_wait_s for r in members),
            "first_at": datetime.fromtimestamp(min(r.started_at for r in members), UTC).isoformat(
                timespec="seconds"),
            "last_at": datetime.fromtimestamp(max(r.started_at for r in members), UTC).isoformat(
                timespec="seconds"),
        }
    return result


def test_the_records_cover_what_the_report_must_show(records: list[CallRecord]) -> None:
    assert {r.provider for r in records} == {"openai", "azure.ai.openai"}
    assert sum(1 for r in records if r.error_type) == 1
    assert sum(1 for r in records if r.cost is None and r.usage.total_tokens) == 1
    assert records[0].usage.cache_read_tokens == 4 and records[0].usage.reasoning_tokens == 2


@pytest.mark.parametrize("by", list(KEYS))
def test_json(by: str, records: list[CallRecord], tmp_path: Path) -> None:
    result = run("--ledger", str(tmp_path / "usage.db"), "--by", by, "--format", "json", "--utc")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    expected = group(records, by)
    rows = {tuple(row[name] for name in KEY_NAMES[by]): row for row in document["rows"]}
    assert set(rows) == set(expected)
    for key, row in rows.items():
        want = expected[key]
        assert {k: v for k, v in row.items() if k not in KEY_NAMES[by]} == {
            **want, "cost": {c: str(a) for c, a in want["cost"].items()}}
    totals = group(records, "provider")  # any grouping; sum its groups
    assert document["totals"]["calls"] == 7
    assert document["totals"]["total_tokens"] == sum(g["total_tokens"] for g in totals.values())
    assert Decimal(document["totals"]["cost"]["USD"]) == sum(r.cost.amount for r in records if r.cost)
    if by == "day":
        assert [row["day"] for row in document["rows"]] == ["2026-03-01", "2026-03-02", "2026-03-03"]
    else:  # the biggest first
        assert [row["total_tokens"] for row in document["rows"]] == sorted(
            (row["total_tokens"] for row in document["rows"]), reverse=True)


@pytest.mark.parametrize("by", list(KEYS))
def test_csv(by: str, records: list[CallRecord], tmp_path: Path) -> None:
    result = run("--ledger", str(tmp_path / "usage.db"), "--by", by, "--format", "csv", "--utc")
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.output)))
    columns = ["calls", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
               "reasoning_tokens", "tool_tokens", "total_tokens", "cost", "currency", "unpriced_calls", "errors",
               "retries", "throttle_wait_s", "first_at", "last_at"]
    assert rows[0] == [*KEY_NAMES[by], *columns]
    expected = group(records, by)
    assert len(rows) == 1 + len(expected)
    for row in rows[1:]:
        key = tuple(row[: len(KEY_NAMES[by])])
        want = expected[key]
        values = dict(zip(columns, row[len(KEY_NAMES[by]):]))
        for column in columns:
            if column == "cost":
                assert values[column] == ";".join(str(want["cost"][c]) for c in sorted(want["cost"]))
            elif column == "currency":
                assert values[column] == ";".join(sorted(want["cost"]))
            else:
                assert values[column] == ("" if want[column] is None else str(want[column]))


@pytest.mark.parametrize("by", list(KEYS))
def test_table(by: str, records: list[CallRecord], tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    result = run("--ledger", str(path), "--by", by, "--utc")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].strip() == f"Usage by {by} ({path})"
    header = lines[1].split()
    assert header == [*KEY_NAMES[by], "calls", "input", "cached", "cache", "write", "output", "reasoning",
                      "total", "cost", "unpriced", "errors"]

    def cells(want: dict[str, Any]) -> list[str]:
        def d(value: int | None) -> str:
            return "-" if value is None else str(value)

        cost = " + ".join(money(a, c) for c, a in sorted(want["cost"].items())) if want["cost"] else "n/a"
        return [str(want["calls"]), d(want["input_tokens"]), d(want["cache_read_tokens"]),
                d(want["cache_write_tokens"]), d(want["output_tokens"]), d(want["reasoning_tokens"]),
                d(want["total_tokens"]), cost, str(want["unpriced_calls"]), str(want["errors"])]

    expected = group(records, by)
    body = [line.split() for line in lines[3:] if line.strip()]
    width = len(KEY_NAMES[by])
    shown = {tuple(row[:width]): row[width:] for row in body[:-1]}
    assert shown == {key: cells(want) for key, want in expected.items()}
    everything = group([replace(r, session_id="all") for r in records], "session")[("all",)]
    assert body[-1] == ["total", *cells(everything)]


def test_since_and_until(records: list[CallRecord], tmp_path: Path) -> None:
    result = run("--ledger", str(tmp_path / "usage.db"), "--by", "day", "--format", "json", "--utc",
                 "--since", "2026-03-02", "--until", "2026-03-03")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["since"] == "2026-03-02T00:00:00+00:00" and document["until"] == "2026-03-03T00:00:00+00:00"
    inside = [r for r in records if BASE + 15 * HOUR <= r.started_at < BASE + 39 * HOUR]
    assert len(inside) == 3
    assert [row["day"] for row in document["rows"]] == ["2026-03-02"]
    assert document["rows"][0] == {"day": "2026-03-02", **{
        k: ({c: str(a) for c, a in v.items()} if k == "cost" else v)
        for k, v in group(inside, "day")[("2026-03-02",)].items()}}


def test_relative_times() -> None:
    now = BASE + 0.5
    assert parse_time("7d", now=now) == now - 7 * 86400
    assert parse_time("12h", now=now) == now - 12 * HOUR
    assert parse_time("30m", now=now) == now - 1800
    assert parse_time("2w", now=now) == now - 14 * 86400
    assert parse_time("today", utc=True, now=now) == BASE - 9 * HOUR
    assert parse_time("yesterday", utc=True, now=now) == BASE - 33 * HOUR
    assert parse_time("2026-03-01T09:00", utc=True) == BASE
    assert parse_time("2026-03-01T10:00+01:00") == BASE


def test_errors_are_clear(tmp_path: Path) -> None:
    result = run("--ledger", str(tmp_path / "nothing.db"))
    assert result.exit_code == 1
    assert f"no ledger at {tmp_path / 'nothing.db'}" in result.output
    result = run()
    assert result.exit_code == 2 and "pass --ledger PATH or set TOKENMETRY_LEDGER" in result.output
    result = run("--ledger", str(tmp_path / "x.db"), "--since", "last tuesday")
    assert result.exit_code == 2 and "use 7d, 12h, 30m, 2w, today, yesterday or an ISO date/time" in result.output


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Every chunk of a PNG, each CRC checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind = data[offset + 4:offset + 8]
        body = data[offset + 8:offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])
        assert zlib.crc32(kind + body) == crc
        chunks.append((kind, body))
        offset += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    return chunks


@pytest.mark.parametrize("period", ["day", "auto", "hour"])
def test_chart_is_a_png_with_the_expected_series(period: str, records: list[CallRecord], tmp_path: Path) -> None:
    chart = tmp_path / "usage.png"
    result = run("--ledger", str(tmp_path / "usage.db"), "--utc", "--chart", str(chart), "--period", period)
    assert result.exit_code == 0, result.output
    assert f"Chart written to {chart}" in result.output
    chunks = png_chunks(chart.read_bytes())
    width, height = struct.unpack(">II", chunks[0][1][:8])
    assert (width, height) == (1000, 700)
    assert sum(len(body) for kind, body in chunks if kind == b"IDAT") > 10_000  # bars were drawn
    text = {body.split(b"\0", 1)[0].decode(): body.split(b"\0", 1)[1] for kind, body in chunks if kind == b"tEXt"}
    series = json.loads(text[CHART_DATA_KEY])

    unit = "day" if period == "auto" else period  # the records span about two days and two hours
    fmt = "%Y-%m-%d" if unit == "day" else "%Y-%m-%d %H:00"

    def bucket(r: CallRecord) -> str:
        return datetime.fromtimestamp(r.started_at, UTC).strftime(fmt)

    periods = sorted({bucket(r) for r in records})
    models = sorted({f"{r.provider}/{r.response_model or r.request_model}" for r in records})
    tokens = {m: [sum(r.usage.total_tokens for r in records if bucket(r) == p
                      and f"{r.provider}/{r.response_model or r.request_model}" == m) for p in periods] for m in models}
    costs = {m: [str(sum((r.cost.amount for r in records if r.cost and bucket(r) == p
                          and f"{r.provider}/{r.response_model or r.request_model}" == m), Decimal(0)))
                 for p in periods] for m in models}
    assert series == {"period": unit, "periods": periods, "tokens": tokens, "cost": costs, "currency": "USD"}

    from PIL import Image  # matplotlib's own dependency

    with Image.open(chart) as image:
        image.verify()
