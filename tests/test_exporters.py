"""One-line exporters: what each setting plans, a missing package, explicit providers winning, the console
pipeline end to end, the application's own global providers, idempotence.

Anything that builds a pipeline runs in a subprocess: global OpenTelemetry providers can be set only once
per process (the integration tests under tests/integration/ cover OTLP and Prometheus)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tokenmetry
from tokenmetry import exporters
from tokenmetry.config import resolve
from tokenmetry.errors import ConfigError
from tokenmetry.exporters import ExporterPlan, plan
from tokenmetry.testing import LocalAPIServer, Reply
from tokenmetry.usage import Usage

USER = [{"role": "user", "content": "count these exported tokens"}]
HTTP = "opentelemetry.exporter.otlp.proto.http"
GRPC = "opentelemetry.exporter.otlp.proto.grpc"
SDK = "opentelemetry.sdk"


@pytest.fixture
def server() -> Iterator[LocalAPIServer]:
    with LocalAPIServer() as srv:
        yield srv


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENMETRY_", "OTEL_"))}
    env.update(extra)
    return env


def options(exporter: str, **more: Any) -> Any:
    return resolve({"exporter": exporter, **more}, env={})


@pytest.mark.parametrize(("exporter", "env", "expected"), [
    ("otlp", {}, ExporterPlan("otlp-http", "otlp", True, True, "http://localhost:4318/v1/traces",
                              "http://localhost:4318/v1/metrics", None, None, (SDK, HTTP), None)),
    ("otlp", {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
              "OTEL_SERVICE_NAME": "checkout"},
     ExporterPlan("otlp-grpc", "otlp", True, True, "http://collector:4317", "http://collector:4317", None, None,
                  (SDK, GRPC), "checkout")),
    ("otlp", {"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc"},
     ExporterPlan("otlp-http", "otlp", True, True, "http://localhost:4318/v1/traces", "http://localhost:4317",
                  None, None, (SDK, GRPC, HTTP), None)),
    ("otlp-http", {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel.example.com:4318/",
                   "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "https://metrics.example.com/custom"},
     ExporterPlan("otlp-http", "otlp-http", True, True, "https://otel.example.com:4318/v1/traces",
                  "https://metrics.example.com/custom", None, None, (SDK, HTTP), None)),
    ("otlp-grpc", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_TRACES_EXPORTER": "none"},
     ExporterPlan("otlp-grpc", "otlp-grpc", False, True, None, "http://localhost:4317", None, None, (SDK, GRPC),
                  None)),
    ("console", {"OTEL_METRICS_EXPORTER": "none"},
     ExporterPlan("console", "console", True, False, "stdout", "stdout", None, None, (SDK,), None)),
    ("prometheus", {}, ExporterPlan("prometheus", "prometheus", False, True, None, None, "127.0.0.1", 9464,
                                    (SDK, "opentelemetry.exporter.prometheus", "prometheus_client"), None)),
])
def test_what_each_setting_plans(exporter: str, env: dict[str, str], expected: ExporterPlan) -> None:
    assert plan(options(exporter), env) == expected
    assert expected.missing_packages() == []  # every exporter package is installed in the test environment


def test_none_and_a_disabled_sdk_plan_nothing() -> None:
    assert plan(options("none"), {}) is None
    assert plan(options("otlp"), {"OTEL_SDK_DISABLED": "true"}) is None


def test_a_bad_protocol_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        plan(options("otlp"), {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    assert str(caught.value) == ("environment OTEL_EXPORTER_OTLP_PROTOCOL: OTEL_EXPORTER_OTLP_PROTOCOL='http/json' "
                                 "is not valid; accepted: grpc or http/protobuf (http/json is not supported by the "
                                 "Python exporters)")


def test_explicit_providers_win_over_the_exporter_option(server: LocalAPIServer, otel: Any,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tokenmetry"):
        tokenmetry.instrument(providers=["openai"], exporter="console", **otel.kwargs())
    assert "tokenmetry: exporter=console is ignored because instrument() was given tracer_provider/meter_provider" \
        in [r.getMessage() for r in caplog.records]
    assert exporters.active() is None
    server.openai_client().chat.completions.create(model="gpt-4o-mini", messages=USER)
    (span,) = otel.finished_spans()
    assert span.attributes["gen_ai.usage.input_tokens"] == server.last_response.usage["prompt_tokens"]


def run_script(script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], check=False, capture_output=True, text=True,
                          env=clean_env(**env), timeout=120)


def test_a_missing_exporter_package_is_a_config_error_naming_it(tmp_path: Path) -> None:
    # the gRPC exporter made unimportable, as on a machine where it was never installed
    (tmp_path / "sitecustomize.py").write_text(f"import sys\nsys.modules[{GRPC!r}] = None\n")
    result = run_script("""
        import tokenmetry
        from tokenmetry.errors import ConfigError
        try:
            tokenmetry.instrument(providers=["openai"])
        except ConfigError as error:
            print(error)
    """, PYTHONPATH=str(tmp_path), TOKENMETRY_EXPORTER="otlp-grpc")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "exporter setup: exporter='otlp-grpc' is not valid; accepted: an exporter whose package is installed: "
        "`pip install opentelemetry-exporter-otlp-proto-grpc` (or `pip install 'tokenmetry[otel]'`)")


def decode_json_objects(text: str) -> list[Any]:
    """The JSON documents the console exporters print one after another."""
    decoder = json.JSONDecoder()
    found, index = [], 0
    while True:
        start = text.find("{", index)
        if start < 0:
            return found
        document, index = decoder.raw_decode(text, start)
        found.append(document)


_CONSOLE_APP = """
    import sys
    import openai, tokenmetry
    from opentelemetry import trace, metrics
    from tokenmetry import exporters
    if sys.argv[2] == "app-provider":
        from opentelemetry.sdk.trace import TracerProvider
        trace.set_tracer_provider(TracerProvider())  # the application's own, set before instrument()
    tokenmetry.instrument(providers=["openai"])
    tokenmetry.instrument(providers=["openai"])  # idempotent: one pipeline
    client = openai.OpenAI(api_key="test", base_url=sys.argv[1])
    with tokenmetry.session("console-session"):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi there"}])
    pipeline = exporters.active()
    print("GLOBAL", trace.get_tracer_provider() is pipeline.tracer_provider,
          metrics.get_meter_provider() is pipeline.meter_provider, file=sys.stderr)
"""


@pytest.mark.parametrize("app_provider", [False, True], ids=["no-app-provider", "app-provider"])
def test_the_console_exporter_end_to_end(app_provider: bool, server: LocalAPIServer) -> None:
    server.enqueue("openai.chat", Reply(usage={"prompt_tokens_details": {"cached_tokens": 3}}))
    result = run_script(_CONSOLE_APP, server.url + "/v1", "app-provider" if app_provider else "-",
                        TOKENMETRY_EXPORTER="console", OTEL_SERVICE_NAME="console-check")
    assert result.returncode == 0, result.stderr
    sent = server.last_response
    assert sent is not None
    documents = decode_json_objects(result.stdout)
    spans = [d for d in documents if "context" in d and "attributes" in d]
    batches = [d for d in documents if "resource_metrics" in d]
    (span,) = spans
    assert span["name"] == "chat gpt-4o-mini" and span["kind"] == "SpanKind.CLIENT"
    assert span["resource"]["attributes"]["service.name"] == "console-check"
    attributes = span["attributes"]
    assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"],
            attributes["gen_ai.usage.cache_read.input_tokens"], attributes["gen_ai.response.id"],
            attributes["gen_ai.conversation.id"]) == (
        sent.usage["prompt_tokens"], sent.usage["completion_tokens"], 3, sent.response_id, "console-session")
    # the final metrics export at exit carries the token histogram: one point per token type
    (batch,) = batches
    (resource,) = batch["resource_metrics"]
    assert resource["resource"]["attributes"]["service.name"] == "console-check"
    metrics_ = {m["name"]: m for scope in resource["scope_metrics"] for m in scope["metrics"]}
    points = {p["attributes"]["gen_ai.token.type"]: (p["count"], p["sum"])
              for p in metrics_["gen_ai.client.token.usage"]["data"]["data_points"]}
    assert points == {"input": (1, sent.usage["prompt_tokens"]), "output": (1, sent.usage["completion_tokens"])}
    (cached,) = metrics_["tokenmetry.tokens"]["data"]["data_points"]
    assert (cached["attributes"]["tokenmetry.token.kind"], cached["value"]) == ("cache_read", 3)
    if app_provider:
        # the application's tracer provider is left alone; tokenmetry's own pipeline still exported its span
        assert "GLOBAL False True" in result.stderr
        assert "tokenmetry: the application already set a global OpenTelemetry tracer provider; it is left alone " \
               "and only tokenmetry's own data goes to exporter=console" in result.stderr
    else:
        assert "GLOBAL True True" in result.stderr
        assert "tokenmetry:" not in result.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


_PROMETHEUS_APP = """
    import sys, urllib.request
    import openai, tokenmetry
    port = int(sys.argv[2])
    tokenmetry.instrument(providers=["openai"], exporter="prometheus", prometheus_port=port)
    tokenmetry.instrument(providers=["openai"], exporter="prometheus", prometheus_port=port)  # no second server
    tokenmetry.instrument(providers=["openai"], exporter="console")  # a change needs a new process: warned
    client = openai.OpenAI(api_key="test", base_url=sys.argv[1])
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi there"}])
    print(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode())
"""


def test_repeated_instrument_builds_one_pipeline(server: LocalAPIServer) -> None:
    port = free_port()
    result = run_script(_PROMETHEUS_APP, server.url + "/v1", str(port))
    assert result.returncode == 0, result.stderr
    assert "tokenmetry: already exporting with exporter=prometheus; exporter=console needs a new process " \
           "(OpenTelemetry's global providers are set once)" in result.stderr
    usage = server.last_response.usage  # type: ignore[union-attr]
    samples = {}
    for line in result.stdout.splitlines():
        if line.startswith("gen_ai_client_token_usage_") and not line.startswith("gen_ai_client_token_usage_bucket"):
            name, value = line.rsplit(" ", 1)
            kind = "input" if 'gen_ai_token_type="input"' in name else "output"
            samples[(name.split("{")[0], kind)] = float(value)
    assert samples == {
        ("gen_ai_client_token_usage_count", "input"): 1.0, ("gen_ai_client_token_usage_sum", "input"):
            float(usage["prompt_tokens"]),
        ("gen_ai_client_token_usage_count", "output"): 1.0, ("gen_ai_client_token_usage_sum", "output"):
            float(usage["completion_tokens"]),
    }


def test_a_busy_prometheus_port_warns_instead_of_failing(server: LocalAPIServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_script("""
            import sys, openai, tokenmetry
            tokenmetry.instrument(providers=["openai"], exporter="prometheus", prometheus_port=int(sys.argv[2]))
            client = openai.OpenAI(api_key="test", base_url=sys.argv[1])
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            print(tokenmetry.sessions.default.usage.total_tokens)
        """, server.url + "/v1", str(port))
    assert result.returncode == 0, result.stderr
    assert f"tokenmetry: cannot serve Prometheus metrics on 127.0.0.1:{port}" in result.stderr
    usage = server.last_response.usage  # type: ignore[union-attr]
    assert int(result.stdout) == Usage(usage["prompt_tokens"], usage["completion_tokens"]).total_tokens
