"""The examples in examples/ run offline (the local vendor endpoint) and print what they promise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str) -> str:
    env = {key: value for key, value in os.environ.items()
           if key not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GOOGLE_API_KEY", "GEMINI_API_KEY")
           and not key.startswith(("TOKENMETRY_", "OTEL_"))}
    done = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_quickstart() -> None:
    out = run_example("quickstart.py")
    assert "using the local OpenAI-compatible endpoint" in out
    assert "calls 2, turns 2" in out
    assert re.search(r"chat gpt-4o-mini: \d+ tokens in [\d.]+ ms, stream=False, source=provider", out)
    assert re.search(r"chat gpt-4o-mini: \d+ tokens in [\d.]+ ms, stream=True, source=provider", out)
    assert "process: 2 requests" in out


def test_retries_and_throttling() -> None:
    out = run_example("retries_and_throttling.py")
    slept = re.search(r"of which ([\d.]+) s asleep on 2 HTTP 429 answers", out)
    assert slept is not None and float(slept.group(1)) >= 0.59  # two retry-after: 0.3 honoured
    assert "process: 2 retries, 2 throttle events" in out


def test_wrap_one_client() -> None:
    out = run_example("wrap_one_client.py")
    assert re.search(r"^anthropic +claude-sonnet-4-5 +input +\d+ output +\d+ cost \d", out, re.MULTILINE)
    assert re.search(r"^gcp\.gemini +gemini-2\.5-flash +input +\d+ output +\d+ cost \d", out, re.MULTILINE)
    assert "2 calls recorded" in out


def test_opentelemetry_console() -> None:
    out = run_example("opentelemetry_console.py")
    assert '"name": "chat gpt-4o-mini"' in out
    assert '"gen_ai.conversation.id": "support-ticket-981"' in out
    assert '"name": "gen_ai.client.token.usage"' in out and '"name": "gen_ai.client.operation.duration"' in out
