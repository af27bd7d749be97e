"""A real Prometheus server scrapes an instrumented process (TOKENMETRY_EXPORTER=prometheus); the token
counters it stores, read back through its HTTP query API, equal what the calls used.

Needs the ``prometheus`` binary (Debian/Ubuntu: ``apt-get install -y prometheus``); skipped without it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tokenmetry
from tokenmetry.testing import LocalAPIServer, Reply
from tokenmetry.usage import Usage

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="the prometheus binary is not installed "
                                "(Debian/Ubuntu: apt-get install -y prometheus)")

CALLS = 6
APP = textwrap.dedent("""
    import sys
    import openai, tokenmetry
    tokenmetry.instrument(providers=["openai"])  # exporter and port from TOKENMETRY_* variables
    client = openai.OpenAI(api_key="test", base_url=sys.argv[1])
    for i in range(int(sys.argv[2])):
        words = " ".join(["word"] * (i + 1))
        if i % 2:
            for _ in client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                    messages=[{"role": "user", "content": words}]):
                pass
        else:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": words}])
    print("ready", flush=True)
    sys.stdin.read()  # keep serving /metrics until the test closes stdin
""")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def server() -> Iterator[LocalAPIServer]:
    with LocalAPIServer() as srv:
        yield srv


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as response:
        document = json.load(response)
    assert document["status"] == "success", document
    return document["data"]["result"]  # type: ignore[no-any-return]


def by_label(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {sample["metric"].get(label, ""): float(sample["value"][1]) for sample in result}


def test_prometheus_scrapes_exact_token_counters(server: LocalAPIServer, tmp_path: Path) -> None:
    # some calls read the prompt cache and reason: their counters must add up too
    server.enqueue("openai.chat", *(Reply(usage={"prompt_tokens_details": {"cached_tokens": 2 + i},
                                                 "completion_tokens_details": {"reasoning_tokens": 1 + i}})
                                    for i in range(3)))
    metrics_port, prometheus_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENMETRY_", "OTEL_"))}
    env.update(TOKENMETRY_EXPORTER="prometheus", TOKENMETRY_PROMETHEUS_PORT=str(metrics_port),
               OTEL_SERVICE_NAME="tokenmetry-prometheus-check")
    app = subprocess.Popen([sys.executable, "-c", APP, server.url + "/v1", str(CALLS)], env=env, text=True,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    prometheus = None
    try:
        assert app.stdout is not None and app.stdout.readline().strip() == "ready", app.stderr and app.stderr.read()
        config = tmp_path / "prometheus.yml"
        config.write_text(textwrap.dedent(f"""
            global:
              scrape_interval: 1s
              evaluation_interval: 1s
            scrape_configs:
              - job_name: tokenmetry
                static_configs:
                  - targets: ["127.0.0.1:{metrics_port}"]
        """))
        prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

        # the truth: the usage objects the server sent, normalised
        sent = [r.response.usage for r in server.requests]  # type: ignore[union-attr]
        assert len(sent) == CALLS
        usages = [Usage(u["prompt_tokens"], u["completion_tokens"], u["prompt_tokens_details"]["cached_tokens"],
                        None, u["completion_tokens_details"]["reasoning_tokens"]) for u in sent]
        total = sum(usages, Usage())
        costs = [tokenmetry.price("gpt-4o-mini", u, provider="openai") for u in usages]

        token_sums: dict[str, float] = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert prometheus.poll() is None, prometheus.stderr.read() if prometheus.stderr else ""
            try:
                token_sums = by_label(query(prometheus_port, 'sum by (gen_ai_token_type) '
                                            '(gen_ai_client_token_usage_sum{job="tokenmetry"})'), "gen_ai_token_type")
            except OSError:  # Prometheus is still starting
                token_sums = {}
            if len(token_sums) == 2:
                break
            time.sleep(0.5)
        assert token_sums == {"input": float(total.input_tokens), "output": float(total.output_tokens)}

        counts = by_label(query(prometheus_port, "sum by (gen_ai_token_type) (gen_ai_client_token_usage_count)"),
                          "gen_ai_token_type")
        assert counts == {"input": float(CALLS), "output": float(CALLS)}
        kinds = by_label(query(prometheus_port, "sum by (tokenmetry_token_kind) (tokenmetry_tokens_total)"),
                         "tokenmetry_token_kind")
        assert kinds == {"cache_read": float(total.cache_read_tokens or 0),
                         "reasoning": float(total.reasoning_tokens or 0)}
        # the cost counter adds each call's float(cost) in call order, as the SDK's Sum does
        expected_cost = 0.0
        for cost in costs:
            assert cost is not None
            expected_cost += float(cost.amount)
        (cost_sample,) = query(prometheus_port, "tokenmetry_cost_USD_total")
        assert float(cost_sample["value"][1]) == expected_cost
        assert cost_sample["metric"]["gen_ai_request_model"] == "gpt-4o-mini"
        durations = query(prometheus_port, "sum(gen_ai_client_operation_duration_seconds_count)")
        assert float(durations[0]["value"][1]) == float(CALLS)
        streamed = query(prometheus_port, "sum(gen_ai_client_operation_time_to_first_chunk_seconds_count)")
        assert float(streamed[0]["value"][1]) == float(CALLS // 2)
        (target,) = query(prometheus_port, 'target_info{job="tokenmetry"}')
        assert target["metric"]["service_name"] == "tokenmetry-prometheus-check"
        # no session id on metrics: it would explode the series count
        series = query(prometheus_port, '{job="tokenmetry", __name__=~"gen_ai_.*|tokenmetry_.*"}')
        assert series and not any("gen_ai_conversation_id" in s["metric"] for s in series)
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        app.stdin.close()  # type: ignore[union-attr]
        app.wait(timeout=30)
