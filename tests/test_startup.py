"""instrument() at start-up: no network, no SDK imported that the application does not import."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_sdks_are_patched_when_imported_not_before() -> None:
    result = _run("""
        import sys
        import tokenmetry
        assert tokenmetry.instrument() == ["anthropic", "google_genai", "openai"]
        assert not {"openai", "anthropic", "google.genai"} & set(sys.modules), sorted(sys.modules)
        import anthropic
        from anthropic._base_client import SyncAPIClient
        assert type(SyncAPIClient.__dict__["request"]).__name__ == "FunctionWrapper"
        assert "openai" not in sys.modules
        tokenmetry.uninstrument()
        import openai
        from openai._base_client import SyncAPIClient as OpenAIClient
        assert type(OpenAIClient.__dict__["request"]).__name__ == "function"  # uninstrumented: hook inert
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_import_and_instrument_open_no_socket() -> None:
    result = _run("""
        import socket
        def refuse(*args, **kwargs):
            raise AssertionError("network I/O during start-up")
        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        import openai, anthropic
        from google import genai
        import tokenmetry
        tokenmetry.instrument()
        tokenmetry.stats()
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
