"""``tokenmetry demo`` as a user runs it: a subprocess, no API key, input from a pipe.

Every figure the demo prints is checked against the truth of the local endpoint: its usage formula
(prompt words + 10 in, reply words out) when the demo runs its own in-process endpoint, and the usage
objects it actually sent when the demo talks (``--base-url``) to a server this test runs.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import tokenmetry
from tokenmetry.cli._format import money
from tokenmetry.cli.demo import CONTINUE_PROMPT, DEFAULT_MODELS, SYSTEM_PROMPT
from tokenmetry.ledger import read_records
from tokenmetry.testing import PROMPT_OVERHEAD, LocalAPIServer, Reply, word_count
from tokenmetry.usage import Usage

ADAPTERS = {"openai": "tokenmetry.providers.openai", "anthropic": "tokenmetry.providers.anthropic",
            "gemini": "tokenmetry.providers.google_genai"}
PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini"}


def _adapter_exists(provider: str) -> bool:
    try:
        importlib.import_module(ADAPTERS[provider])
    except ModuleNotFoundError:
        return False
    return True


PROVIDERS = [pytest.param(p, marks=pytest.mark.skipif(not _adapter_exists(p), reason=f"no {p} adapter yet"))
             for p in ("openai", "anthropic", "gemini")]

# What the local endpoint's default usage objects carry besides input and output (module docstring
# of tokenmetry.testing.server): OpenAI sends cached_tokens 0 and reasoning_tokens 0; Anthropic sends
# cache_read_input_tokens 0 and no thinking count; Gemini sends neither.
DETAILS = {"openai": ("0", "0"), "anthropic": ("0", "-"), "gemini": ("-", "-")}

TURN = re.compile(r"^  turn (\d+) · (\d+) calls? · input (\S+) · cached (\S+) · output (\S+) · reasoning (\S+) · "
                  r"total (\S+)(?: \(estimated\))? · cost (\S+)$")
STATUS = re.compile(r"^  session (\S+) · (\d+) turns? · (\d+) tokens/min · throttle wait ([\d.]+) s · cost (\S+)$")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh shell: no API keys, no tokenmetry or OpenTelemetry settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TOKENMETRY_", "OTEL_")) and k not in
           ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_BASE_URL",
            "ANTHROPIC_BASE_URL", "GOOGLE_GENAI_USE_VERTEXAI")}
    env["COLUMNS"] = "200"
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


def run_demo(cwd: Path, args: list[str], lines: list[str], **env: str) -> str:
    result = subprocess.run([sys.executable, "-m", "tokenmetry.cli", "demo", "--chunk-delay", "0", *args], check=False,
                            input="\n".join(lines) + "\n", capture_output=True, text=True, cwd=cwd,
                            env=clean_env(**env), timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@dataclass
class Transcript:
    replies: list[str] = field(default_factory=list)
    turns: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def parse(output: str) -> Transcript:
    transcript = Transcript(lines=output.splitlines())
    for line in transcript.lines:
        if line.startswith("assistant> "):
            transcript.replies.append(line[len("assistant> "):])
        elif match := TURN.match(line):
            number, calls, input_, cached, output_, reasoning, total, cost = match.groups()
            transcript.turns.append({"turn": int(number), "calls": int(calls), "input": input_, "cached": cached,
                                     "output": output_, "reasoning": reasoning, "total": total, "cost": cost})
        elif match := STATUS.match(line):
            session, turns, tpm, wait, cost = match.groups()
            transcript.statuses.append({"session": session, "turns": int(turns), "tpm": int(tpm),
                                        "throttle_wait": wait, "cost": cost})
    return transcript


def table_rows(lines: list[str], start: int, first_cell: str) -> list[str]:
    """The cells of the first table row after ``lines[start]`` whose first cell is ``first_cell``."""
    for line in lines[start:]:
        cells = line.split()
        if first_cell == "per" and cells[:2] == ["per", "turn"]:
            return ["per turn", *cells[2:]]
        if first_cell == "all" and cells[:2] == ["all", "sessions"]:
            return ["all sessions", *cells[2:]]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} after line {start}")


def index_of(lines: list[str], prefix: str, after: int = 0) -> int:
    for number, line in enumerate(lines[after:], after):
        if line.startswith(prefix):
            return number
    raise AssertionError(f"no line starting with {prefix!r}")


def d(value: int | None) -> str:
    return "-" if value is None else str(value)


def avg(value: int | None, n: int) -> str:
    return "-" if value is None else f"{value / n:.1f}"


def price(provider: str, model: str, usages: list[Usage]) -> Decimal:
    total = Decimal(0)
    for usage in usages:
        cost = tokenmetry.price(model, usage, provider=PROVIDER_NAMES[provider])
        assert cost is not None, f"{model} must be priced for this test"
        total += cost.amount
    return total


# ------------------------------------------------------------------------------------------ no key
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
def test_demo_without_a_key_uses_the_local_endpoint(provider: str, stream: bool, tmp_path: Path) -> None:
    lines = ["hello there", "tell me about tokens and costs please", "/stats", "/new", "what about caching",
             "/exit"]
    output = run_demo(tmp_path, ["--provider", provider] + ([] if stream else ["--no-stream"]), lines)
    transcript = parse(output)
    model = DEFAULT_MODELS[provider]
    wire = {"openai": "OpenAI", "anthropic": "Anthropic", "gemini": "Gemini"}[provider]
    assert "this demo talks to a LOCAL endpoint at http://127.0.0.1:" in output
    assert f"speaks the {wire} wire protocol" in output
    assert len(transcript.replies) == 3 and len(transcript.turns) == 3 and len(transcript.statuses) == 3

    # the truth: the local endpoint's formula over the conversation each call sent
    cached, reasoning = DETAILS[provider]
    histories = [["hello there", transcript.replies[0], lines[1], transcript.replies[1]],
                 [lines[4], transcript.replies[2]]]
    expected_turns = []
    for history in histories:
        for index in range(0, len(history), 2):
            prompt_words = word_count(SYSTEM_PROMPT) + sum(word_count(t) for t in history[: index + 1])
            usage = Usage(prompt_words + PROMPT_OVERHEAD, word_count(history[index + 1]))
            expected_turns.append(usage)
    numbers = [1, 2, 1]
    for turn, usage, number in zip(transcript.turns, expected_turns, numbers):
        assert turn == {"turn": number, "calls": 1, "input": str(usage.input_tokens), "cached": cached,
                        "output": str(usage.output_tokens), "reasoning": reasoning,
                        "total": str(usage.total_tokens), "cost": money(price(provider, model, [usage]))}

    # the status line: session totals (the whole test runs well inside the 60-second TPM window)
    first, second = transcript.statuses[0]["session"], transcript.statuses[2]["session"]
    assert transcript.statuses[1]["session"] == first and second != first
    running = [expected_turns[0], expected_turns[0] + expected_turns[1], expected_turns[2]]
    priced = [[expected_turns[0]], expected_turns[:2], [expected_turns[2]]]
    for status, turns, usage, usages in zip(transcript.statuses, [1, 2, 1], running, priced):
        assert status["turns"] == turns
        assert status["tpm"] == usage.total_tokens
        assert status["throttle_wait"] == "0.00"
        assert status["cost"] == money(price(provider, model, usages))

    # /stats of the first session: totals, averages per turn, by model
    lines_out = transcript.lines
    stats_at = index_of(lines_out, "Session statistics: ")
    assert lines_out[stats_at] == f"Session statistics: session {first} · 2 turns · 2 calls · 0 errors · 0 retries"
    session_usage = expected_turns[0] + expected_turns[1]
    session_cost = price(provider, model, expected_turns[:2])
    total_row = [d(session_usage.input_tokens), cached, d(session_usage.output_tokens), reasoning,
                 d(session_usage.total_tokens)]
    assert table_rows(lines_out, stats_at, "total") == ["total", "2", *total_row, money(session_cost)]
    per_turn = [avg(session_usage.input_tokens, 2), "-" if cached == "-" else "0.0",
                avg(session_usage.output_tokens, 2), "-" if reasoning == "-" else "0.0",
                avg(session_usage.total_tokens, 2)]
    assert table_rows(lines_out, stats_at, "per") == [
        "per turn", "1.0", *per_turn, money((session_cost / 2).quantize(Decimal("1e-10")))]
    assert table_rows(lines_out, stats_at, model) == [model, "2", *total_row, money(session_cost)]

    # /new, then /exit: the final statistics of the second session and of both sessions
    assert index_of(lines_out, f"Started session {second} (session {first} is kept", stats_at)
    final_at = index_of(lines_out, "Final statistics: ", stats_at)
    assert lines_out[final_at] == f"Final statistics: session {second} · 1 turn · 1 call · 0 errors · 0 retries"
    last = expected_turns[2]
    last_row = [d(last.input_tokens), cached, d(last.output_tokens), reasoning, d(last.total_tokens)]
    assert table_rows(lines_out, final_at, "total") == ["total", "1", *last_row,
                                                        money(price(provider, model, [last]))]
    all_at = index_of(lines_out, "All 2 sessions:", final_at)
    assert table_rows(lines_out, all_at, first) == [first, "2", "2", *total_row, money(session_cost)]
    assert table_rows(lines_out, all_at, second) == [second, "1", "1", *last_row,
                                                     money(price(provider, model, [last]))]
    everything = session_usage + last
    assert table_rows(lines_out, all_at, "all") == [
        "all sessions", "3", "3", d(everything.input_tokens), cached, d(everything.output_tokens), reasoning,
        d(everything.total_tokens), money(price(provider, model, expected_turns))]


def test_demo_without_a_key_and_no_adapter_or_sdk_fails_clearly(tmp_path: Path) -> None:
    # an SDK that cannot be imported: the demo must say so instead of showing zeros
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text("import sys\nsys.modules['anthropic'] = None\n")
    result = subprocess.run([sys.executable, "-m", "tokenmetry.cli", "demo", "--provider", "anthropic"], check=False,
                            input="/exit\n", capture_output=True, text=True, cwd=tmp_path, timeout=60,
                            env=clean_env(PYTHONPATH=str(tmp_path)))
    assert result.returncode == 1
    assert "cannot run the anthropic demo: the anthropic SDK is not installed: pip install anthropic" in result.stderr


# ------------------------------------------------------------------------------------------ truth from a server
def usage_truth(provider: str, sent: dict[str, Any]) -> Usage:
    """A vendor usage object as the server sent it, normalised per SPEC §3."""
    if provider == "openai":
        prompt_details = sent.get("prompt_tokens_details") or {}
        completion_details = sent.get("completion_tokens_details") or {}
        return Usage(sent["prompt_tokens"], sent["completion_tokens"], prompt_details.get("cached_tokens"),
                     prompt_details.get("cache_write_tokens"), completion_details.get("reasoning_tokens"))
    if provider == "anthropic":
        read = sent.get("cache_read_input_tokens")
        write = sent.get("cache_creation_input_tokens")
        thinking = (sent.get("output_tokens_details") or {}).get("thinking_tokens")
        return Usage(sent["input_tokens"] + (read or 0) + (write or 0), sent["output_tokens"], read, write, thinking)
    thoughts = sent.get("thoughtsTokenCount")
    tool = sent.get("toolUsePromptTokenCount")
    return Usage(sent["promptTokenCount"] + (tool or 0), sent.get("candidatesTokenCount", 0) + (thoughts or 0),
                 sent.get("cachedContentTokenCount"), None, thoughts, tool)


@pytest.fixture
def server() -> Iterator[LocalAPIServer]:
    with LocalAPIServer() as srv:
        yield srv


def base_url(provider: str, server: LocalAPIServer) -> str:
    return server.url + "/v1" if provider == "openai" else server.url


def detail_usage(provider: str) -> dict[str, Any]:
    """A usage override with cache reads and reasoning, in each vendor's own words."""
    if provider == "openai":
        return {"prompt_tokens_details": {"cached_tokens": 7}, "completion_tokens_details": {"reasoning_tokens": 3}}
    if provider == "anthropic":
        return {"cache_read_input_tokens": 7, "output_tokens_details": {"thinking_tokens": 3}}
    return {"cachedContentTokenCount": 7, "thoughtsTokenCount": 3}


def last_user_text(provider: str, body: dict[str, Any]) -> str:
    if provider == "gemini":
        return body["contents"][-1]["parts"][0]["text"]
    return body["messages"][-1]["content"]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
def test_a_turn_is_the_sum_of_all_its_calls(provider: str, stream: bool, server: LocalAPIServer,
                                            tmp_path: Path) -> None:
    """Turn 1 is cut at --max-tokens twice, so it makes three calls (continuations); every figure is the
    sum of the three usage objects the server sent, cache reads and reasoning included."""
    long_text = "one two three four five six seven eight nine"
    server.enqueue("*", *(Reply(text=long_text, usage=detail_usage(provider)) for _ in range(3)))
    server.enqueue("*", Reply(text="short answer here", usage=detail_usage(provider)))
    model = DEFAULT_MODELS[provider]
    args = ["--provider", provider, "--base-url", base_url(provider, server), "--max-tokens", "5",
            "--max-continuations", "2"] + ([] if stream else ["--no-stream"])
    # without a per-call history (history_limit 0) a turn's figures must still be whole
    env = {} if stream else {"TOKENMETRY_HISTORY_LIMIT": "0"}
    output = run_demo(tmp_path, args, ["first question", "second question", "/stats", "/exit"], **env)
    transcript = parse(output)
    assert f"Calls go to {base_url(provider, server)} (no API key set: sending a placeholder)" in output

    requests = server.requests
    assert [r.response.status for r in requests if r.response] == [200, 200, 200, 200]
    # the continuation calls really continued the conversation
    assert [last_user_text(provider, r.json) for r in requests] == [
        "first question", CONTINUE_PROMPT, CONTINUE_PROMPT, "second question"]
    truths = [usage_truth(provider, r.response.usage) for r in requests]  # type: ignore[union-attr]
    assert transcript.replies[0] == "one two three four five one two three four five one two three four five " \
                                    "[cut at --max-tokens]"
    assert transcript.replies[1] == "short answer here"

    turn_usages = [sum(truths[:3], Usage()), truths[3]]
    for turn, usage, calls, number, priced in zip(transcript.turns, turn_usages, [3, 1], [1, 2],
                                                  [truths[:3], truths[3:]]):
        assert turn == {"turn": number, "calls": calls, "input": d(usage.input_tokens),
                        "cached": d(usage.cache_read_tokens), "output": d(usage.output_tokens),
                        "reasoning": d(usage.reasoning_tokens), "total": d(usage.total_tokens),
                        "cost": money(price(provider, model, priced))}
    # the cache reads and reasoning of every call were counted, not only the first call's
    assert turn_usages[0].cache_read_tokens == 21 and turn_usages[0].reasoning_tokens == 9
    session_usage = sum(truths, Usage())
    assert transcript.statuses[-1]["tpm"] == session_usage.total_tokens
    stats_at = index_of(transcript.lines, "Session statistics: ")
    assert transcript.lines[stats_at].endswith("· 2 turns · 4 calls · 0 errors · 0 retries")
    assert table_rows(transcript.lines, stats_at, "total") == [
        "total", "4", d(session_usage.input_tokens), d(session_usage.cache_read_tokens),
        d(session_usage.output_tokens), d(session_usage.reasoning_tokens), d(session_usage.total_tokens),
        money(price(provider, model, truths))]
    assert table_rows(transcript.lines, stats_at, "per")[1:] == [
        "2.0", avg(session_usage.input_tokens, 2), avg(session_usage.cache_read_tokens, 2),
        avg(session_usage.output_tokens, 2), avg(session_usage.reasoning_tokens, 2),
        avg(session_usage.total_tokens, 2),
        money((price(provider, model, truths) / 2).quantize(Decimal("1e-10")))]


@pytest.mark.parametrize("provider", [p for p in PROVIDERS if p.values[0] != "gemini"])
def test_throttle_wait_and_the_ledger_report_agree(provider: str, server: LocalAPIServer, tmp_path: Path) -> None:
    """A 429 with retry-after-ms: the SDK sleeps and retries inside the call. The demo's throttle wait
    is the slept time the ledger recorded, and ``tokenmetry report`` totals what the demo showed."""
    server.enqueue("*", Reply(status=429, headers={"retry-after-ms": "300"}))
    ledger = tmp_path / "usage.db"
    output = run_demo(tmp_path, ["--provider", provider, "--base-url", base_url(provider, server)],
                      ["hello", "/stats", "/exit"], TOKENMETRY_LEDGER=str(ledger))
    transcript = parse(output)
    statuses = [r.response.status for r in server.requests if r.response]
    assert statuses == [429, 200]
    truth = usage_truth(provider, server.requests[1].response.usage)  # type: ignore[union-attr]

    rows = list(read_records(ledger))
    assert len(rows) == 1
    record = rows[0]
    assert record.usage == truth and record.retries == 1
    assert 0.3 <= record.throttle_wait_s < 2.0
    assert transcript.statuses[0]["throttle_wait"] == f"{record.throttle_wait_s:.2f}"
    stats_at = index_of(transcript.lines, "Session statistics: ")
    assert transcript.lines[stats_at].endswith("· 1 turn · 1 call · 0 errors · 1 retry")
    assert index_of(transcript.lines, f"tokens/min {truth.total_tokens} ·", stats_at)
    assert f"throttle wait {record.throttle_wait_s:.2f} s" in transcript.lines[index_of(
        transcript.lines, "tokens/min", stats_at)]

    report = subprocess.run([sys.executable, "-m", "tokenmetry.cli", "report", "--ledger", str(ledger), "--by",
                             "session", "--format", "json"], check=False, capture_output=True, text=True, env=clean_env(),
                            cwd=tmp_path, timeout=60)
    assert report.returncode == 0, report.stderr
    document = json.loads(report.stdout)
    (row,) = document["rows"]
    assert row["session"] == transcript.statuses[0]["session"]
    assert (row["calls"], row["input_tokens"], row["output_tokens"], row["total_tokens"], row["retries"]) == (
        1, truth.input_tokens, truth.output_tokens, truth.total_tokens, 1)
    assert row["throttle_wait_s"] == record.throttle_wait_s
    assert money(Decimal(row["cost"]["USD"])) == transcript.turns[0]["cost"]
