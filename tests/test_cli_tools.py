"""``tokenmetry count``, ``tokenmetry price`` and ``tokenmetry diagnostics``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import tokenmetry
from tokenmetry.cli import cli
from tokenmetry.config import resolve
from tokenmetry.ledger import Ledger
from tokenmetry.pricing import price_info, pricing_data_version
from tokenmetry.providers import all_patches, load_adapter
from tokenmetry.usage import CallRecord, Usage

MESSAGES = [{"role": "system", "content": "You count."}, {"role": "user", "content": "How many tokens is this?"}]


def invoke(*args: str, stdin: str | None = None, **env: str | None) -> Any:
    clean: dict[str, str | None] = {k: None for k in os.environ if k.startswith(("TOKENMETRY_", "OTEL_"))}
    clean.update(COLUMNS="200", **env)
    return CliRunner().invoke(cli, list(args), input=stdin, env=clean)


# ------------------------------------------------------------------------------------------ count
@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4", "claude-sonnet-4-5", "gemini-2.5-flash"])
def test_count_a_text(model: str) -> None:
    truth = tokenmetry.count_tokens(model, text="The quick brown fox jumps over the lazy dog")
    result = invoke("count", "-m", model, "The quick brown fox", "jumps over the lazy dog")
    assert result.exit_code == 0, result.output
    kind = "exact" if truth.exact else "estimate"
    assert result.output == f"{truth.tokens} tokens ({kind}, {truth.method})\n"


def test_count_from_stdin_a_file_and_messages(tmp_path: Path) -> None:
    text = "first line of a file\nsecond line of the file\n"
    truth = tokenmetry.count_tokens("gpt-4o", text=text)
    result = invoke("count", "-m", "gpt-4o", "--json", stdin=text)
    assert json.loads(result.output) == {"model": "gpt-4o", **truth.to_dict()}
    file = tmp_path / "prompt.txt"
    file.write_text(text)
    result = invoke("count", "-m", "gpt-4o", "--file", str(file), "--json")
    assert json.loads(result.output) == {"model": "gpt-4o", **truth.to_dict()}

    messages = tmp_path / "messages.json"
    messages.write_text(json.dumps(MESSAGES))
    chat_truth = tokenmetry.count_tokens("gpt-4o", MESSAGES)
    result = invoke("count", "-m", "gpt-4o", "--messages", str(messages), "--json")
    assert json.loads(result.output) == {"model": "gpt-4o", **chat_truth.to_dict()}
    # a whole Anthropic-style request body: system apart from the messages
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"system": "You count.", "messages": MESSAGES[1:]}))
    claude_truth = tokenmetry.count_tokens("claude-sonnet-4-5", MESSAGES[1:], system="You count.")
    result = invoke("count", "-m", "claude-sonnet-4-5", "--messages", str(body), "--json")
    assert json.loads(result.output) == {"model": "claude-sonnet-4-5", **claude_truth.to_dict()}


def test_count_errors() -> None:
    result = invoke("count", "-m", "gpt-4o", "--messages", "/no/such/file.json")
    assert result.exit_code == 2 and "cannot read /no/such/file.json" in result.output
    result = invoke("count", "hello")
    assert result.exit_code == 2 and "Missing option '--model'" in result.output


# ------------------------------------------------------------------------------------------ price
def test_price_a_usage() -> None:
    usage = Usage(12_000, 900, cache_read_tokens=8_000, reasoning_tokens=300)
    truth = tokenmetry.price("gpt-4o-2024-11-20", usage)
    assert truth is not None
    result = invoke("price", "-m", "gpt-4o-2024-11-20", "--input", "12000", "--cached", "8000", "--output", "900",
                    "--reasoning", "300", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"model": "gpt-4o-2024-11-20", "usage": usage.to_dict(),
                                         "cost": truth.to_dict()}
    result = invoke("price", "-m", "gpt-4o-2024-11-20", "--input", "12000", "--cached", "8000", "--output", "900")
    lines = result.output.splitlines()
    assert lines[0] == f"${truth.amount.normalize():f} for 12900 tokens on gpt-4o-2024-11-20 (genai-prices)"
    assert lines[1] == f"  input: ${truth.input.normalize():f}"  # type: ignore[union-attr]


def test_price_in_another_currency() -> None:
    usage = Usage(1000, 100)
    options = resolve({"currency": "EUR"}, env={"TOKENMETRY_CURRENCY_RATES": "EUR=0.5"})
    truth = tokenmetry.price("claude-sonnet-4-5", usage, options=options)
    assert truth is not None and truth.currency == "EUR"
    result = invoke("price", "-m", "claude-sonnet-4-5", "--input", "1000", "--output", "100", "--currency", "EUR",
                    "--json", TOKENMETRY_CURRENCY_RATES="EUR=0.5")
    assert json.loads(result.output)["cost"] == truth.to_dict()


def test_price_list_and_errors() -> None:
    info = price_info("claude-sonnet-4-5")
    assert info is not None
    result = invoke("price", "-m", "claude-sonnet-4-5", "--json")
    assert json.loads(result.output) == {"model": "claude-sonnet-4-5", **json.loads(json.dumps(info))}
    result = invoke("price", "-m", "claude-sonnet-4-5")
    assert result.output.splitlines()[0] == (
        f"claude-sonnet-4-5 → {info['provider_id']}/{info['model_id']} (USD per million tokens)")
    result = invoke("price", "-m", "no-such-model-anywhere", "--input", "10")
    assert result.exit_code == 1 and "no price is known for 'no-such-model-anywhere'" in result.output
    result = invoke("price", "-m", "gpt-4o", "--input", "10", "--cached", "11")
    assert result.exit_code == 2 and "--cached and --cache-write are parts of --input" in result.output
    result = invoke("price", "-m", "gpt-4o", "--input", "10", "--output", "1", "--reasoning", "2")
    assert result.exit_code == 2 and "--reasoning is part of --output" in result.output


# ------------------------------------------------------------------------------------------ diagnostics
def diagnose(*, cwd: Path, pythonpath: str | None = None, **env: str) -> tuple[int, dict[str, Any], str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENMETRY_", "OTEL_"))}
    full.update(env)
    if pythonpath:
        full["PYTHONPATH"] = pythonpath
    result = subprocess.run([sys.executable, "-m", "tokenmetry.cli", "diagnostics", "--json"], check=False,
                            capture_output=True,
                            text=True, env=full, cwd=cwd, timeout=120)
    return result.returncode, json.loads(result.stdout), result.stderr


def test_diagnostics_of_a_healthy_environment(tmp_path: Path) -> None:
    code, found, _ = diagnose(cwd=tmp_path, OTEL_EXPORTER_OTLP_HEADERS="api-key=secret,x-team=blue",
                              OTEL_SERVICE_NAME="svc")
    assert code == 0 and found["problems"] == []
    assert found["tokenmetry"]["version"] == tokenmetry.__version__
    for name, package in (("openai", "openai"), ("anthropic", "anthropic"), ("google_genai", "google-genai")):
        entry = found["sdks"][name]
        assert entry["version"] == version(package)
        adapter = load_adapter(name)
        if adapter is None:
            assert entry["status"].endswith("no adapter for it: not instrumented")
            continue
        assert adapter.available()
        patches = all_patches(adapter)
        assert entry["status"] == f"instrumentable ({len(patches)} patch points)"
        assert [p.rsplit(".", 1)[1] for p in entry["patch_points"]] == [p.name for p in patches]
    assert found["opentelemetry"]["packages"]["opentelemetry-sdk"] == version("opentelemetry-sdk")
    assert found["opentelemetry"]["environment"] == {"OTEL_SERVICE_NAME": "svc", "OTEL_EXPORTER_OTLP_HEADERS":
                                                     "api-key=<redacted>, x-team=<redacted>"}
    assert "secret" not in json.dumps(found)
    assert found["opentelemetry"]["exporter"]["exporter"] == "none"
    assert found["pricing"]["data"] == pricing_data_version()
    # a fresh process has loaded nothing: each encoding is found as its local rank file
    encodings = found["tokenizers"]["encodings"]
    assert sorted(encodings) == ["cl100k_base", "o200k_base"]
    for name, state in encodings.items():
        assert state.startswith("available, not loaded (") and state.endswith(f"{name}.tiktoken.gz)")
        assert Path(state[len("available, not loaded ("):-1]).is_file()
    assert found["ledger"] == {"path": None, "status": "off (set TOKENMETRY_LEDGER=path to record every call)"}


def test_diagnostics_of_an_existing_ledger_and_an_exporter(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    record = CallRecord("openai", "chat", "gpt-4o", "gpt-4o", "id-1", Usage(10, 5), "provider", None, False,
                        1.0e9, 0.5, None, 0, 0.0, None, "s")
    assert Ledger(path).write([record, record]) == 2
    code, found, _ = diagnose(cwd=tmp_path, TOKENMETRY_LEDGER=str(path), TOKENMETRY_EXPORTER="otlp",
                              OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318")
    assert code == 0, found["problems"]
    assert found["ledger"] == {"path": str(path), "status": "ok", "rows": 2, "schema_version": 1,
                               "journal_mode": "wal", "bytes": path.stat().st_size}
    exporter = found["opentelemetry"]["exporter"]
    assert (exporter["exporter"], exporter["traces_endpoint"], exporter["metrics_endpoint"]) == (
        "otlp-http", "http://collector:4318/v1/traces", "http://collector:4318/v1/metrics")


@pytest.mark.parametrize(("env", "problem"), [
    ({"TOKENMETRY_EXPORTER": "zipkin"}, ("configuration: environment TOKENMETRY_EXPORTER: exporter='zipkin' is not "
                                         "valid; accepted: one of none, otlp, otlp-http, otlp-grpc, console, "
                                         "prometheus")),
    ({"TOKENMETRY_LEDGER": "/no/such/dir/usage.db"},
     "ledger /no/such/dir/usage.db cannot be written: its directory /no/such/dir does not exist"),
    ({"TOKENMETRY_CURRENCY": "EUR"}, ("currency EUR has no currency_rates entry: every cost would be unknown "
                                      "(set TOKENMETRY_CURRENCY_RATES, e.g. EUR=0.92)")),
    ({"TOKENMETRY_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
     ("exporter: environment OTEL_EXPORTER_OTLP_PROTOCOL: OTEL_EXPORTER_OTLP_PROTOCOL='http/json' is not valid; "
      "accepted: grpc or http/protobuf (http/json is not supported by the Python exporters)")),
])
def test_diagnostics_fails_when_a_setting_cannot_work(env: dict[str, str], problem: str, tmp_path: Path) -> None:
    code, found, _ = diagnose(cwd=tmp_path, **env)
    assert code == 1
    assert found["problems"] == [problem]


def test_diagnostics_names_a_missing_exporter_package(tmp_path: Path) -> None:
    blockers = tmp_path / "site"
    blockers.mkdir()
    (blockers / "sitecustomize.py").write_text(
        "import importlib.util, sys\n"
        "_find = importlib.util.find_spec\n"
        "def find_spec(name, package=None):\n"
        "    if name.startswith('opentelemetry.exporter.otlp.proto.grpc'):\n"
        "        return None\n"
        "    return _find(name, package)\n"
        "importlib.util.find_spec = find_spec\n")
    code, found, _ = diagnose(cwd=tmp_path, pythonpath=str(blockers), TOKENMETRY_EXPORTER="otlp-grpc")
    assert code == 1
    assert found["problems"] == [("exporter=otlp-grpc needs packages that are not installed: "
                                  "pip install opentelemetry-exporter-otlp-proto-grpc")]


def test_diagnostics_reads_a_toml_file(tmp_path: Path) -> None:
    (tmp_path / "tokenmetry.toml").write_text('[tokenmetry]\nledger = "usage.db"\nexporter = "console"\n')
    code, found, _ = diagnose(cwd=tmp_path)
    assert code == 0, found["problems"]
    assert found["configuration"]["toml_file"] == "tokenmetry.toml"
    assert found["ledger"] == {"path": str(tmp_path / "usage.db"), "status": "will be created on the first call"}
    assert found["opentelemetry"]["exporter"]["exporter"] == "console"
    assert not (tmp_path / "usage.db").exists()  # looking creates nothing
