"""The usage ledger: one row per call, exactly the CallRecord; off the calling thread; many processes."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import tokenmetry
from tokenmetry import ledger
from tokenmetry.call import recorder
from tokenmetry.ledger import COLUMNS, SCHEMA_VERSION, read_records
from tokenmetry.testing import LocalAPIServer, Reply
from tokenmetry.usage import Usage

USER = [{"role": "user", "content": "How many tokens does this ledger hold"}]


@pytest.fixture(autouse=True)
def close_ledger() -> Iterator[None]:
    yield
    ledger.close()


@pytest.fixture
def server() -> Iterator[LocalAPIServer]:
    with LocalAPIServer() as srv:
        yield srv


def openai_truth(sent: dict[str, Any]) -> Usage:
    """An OpenAI usage object as sent (chat, embeddings or responses), normalised per SPEC §3."""
    if "input_tokens" in sent:  # Responses API
        return Usage(sent["input_tokens"], sent["output_tokens"],
                     (sent.get("input_tokens_details") or {}).get("cached_tokens"),
                     (sent.get("input_tokens_details") or {}).get("cache_write_tokens"),
                     (sent.get("output_tokens_details") or {}).get("reasoning_tokens"))
    prompt = sent.get("prompt_tokens_details") or {}
    completion = sent.get("completion_tokens_details") or {}
    return Usage(sent["prompt_tokens"], sent.get("completion_tokens", 0), prompt.get("cached_tokens"),
                 prompt.get("cache_write_tokens"), completion.get("reasoning_tokens"))


def test_rows_match_the_calls_exactly(server: LocalAPIServer, tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    tokenmetry.instrument(providers=["openai"], ledger=str(path))
    client = server.openai_client(max_retries=2)
    server.enqueue("openai.chat", Reply(usage={"prompt_tokens_details": {"cached_tokens": 5},
                                               "completion_tokens_details": {"reasoning_tokens": 2}}))
    with tokenmetry.session("alpha") as alpha:
        with alpha.turn():
            client.chat.completions.create(model="gpt-4o-mini", messages=USER)
            for _ in client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True):
                pass
        client.embeddings.create(model="text-embedding-3-small", input="some words to embed here")
    server.enqueue("openai.responses", Reply(status=429, headers={"retry-after-ms": "50"}))
    with tokenmetry.session("beta") as beta:
        client.responses.create(model="gpt-4.1-mini", input="hello ledger")
        server.enqueue("openai.chat", Reply(status=400))
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="gpt-4o-mini", messages=USER)
        client.chat.completions.create(model="no-such-model-for-ledger", messages=USER)  # unpriced
    current = ledger.current()
    assert current is not None and current.flush()

    records = list(read_records(path))
    expected = sorted([*alpha.calls, *beta.calls], key=lambda r: r.started_at)
    assert records == expected  # every field, floats and Decimals included
    assert len(records) == 6

    # ... and the records hold the server's truth (successful responses, in call order)
    answered = [r.response for r in server.requests if r.response is not None and r.response.status == 200]
    with_usage = [r for r in records if r.error_type is None]
    assert [openai_truth(sent.usage) for sent in answered] == [r.usage for r in with_usage]
    assert [sent.response_id for sent in answered] == [r.response_id for r in with_usage]
    assert with_usage[0].usage.cache_read_tokens == 5 and with_usage[0].usage.reasoning_tokens == 2
    assert records[3].retries == 1 and records[3].throttle_wait_s >= 0.05
    assert records[4].error_type == "BadRequestError" and records[4].usage == Usage()
    assert records[5].cost is None and records[5].usage.total_tokens > 0

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    names = [row[1] for row in conn.execute("PRAGMA table_info(calls)")]
    assert names == ["id", *(name for name, _ in COLUMNS)]
    raw = conn.execute("SELECT pid, host, cost, currency, finish_reasons, stream, total_tokens FROM calls "
                       "ORDER BY id").fetchall()
    assert {(pid, host) for pid, host, *_ in raw} == {(os.getpid(), socket.gethostname())}
    for (_, _, cost, currency, reasons, stream, total), record in zip(raw, records):
        assert cost == (None if record.cost is None else str(record.cost.amount))  # exact text, not a float
        assert currency == (None if record.cost is None else record.cost.currency)
        assert json.loads(reasons) == list(record.finish_reasons)
        assert stream == int(record.stream) and total == record.usage.total_tokens


def test_instrument_twice_writes_each_call_once(server: LocalAPIServer, tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    tokenmetry.instrument(providers=["openai"], ledger=str(path))
    tokenmetry.instrument(providers=["openai"], ledger=str(path))
    first = ledger.current()
    assert first is not None and recorder._sinks.count(first.sink) == 1
    server.openai_client().chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert first.flush()
    assert len(list(read_records(path))) == 1

    # another path: the first ledger is flushed and closed, later calls go to the second
    other = tmp_path / "other.db"
    tokenmetry.instrument(providers=["openai"], ledger=str(other))
    assert first.sink not in recorder._sinks
    server.openai_client().chat.completions.create(model="gpt-4o-mini", messages=USER)
    second = ledger.current()
    assert second is not None and second is not first and second.flush()
    assert len(list(read_records(path))) == 1 and len(list(read_records(other))) == 1


def test_a_locked_file_never_blocks_a_call_and_loses_nothing(server: LocalAPIServer, tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    tokenmetry.instrument(providers=["openai"], ledger=str(path))
    client = server.openai_client()
    client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    current = ledger.current()
    assert current is not None and current.flush()

    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holding the write lock (busy timeout: 30 s)
    try:
        durations = []
        for _ in range(20):
            started = time.monotonic()
            client.chat.completions.create(model="gpt-4o-mini", messages=USER)
            durations.append(time.monotonic() - started)
        time.sleep(0.5)  # the writer is now waiting on the lock with a batch in hand
        assert max(durations) < 5.0  # a call that waited for the file would take the 30-s busy timeout
        assert len(list(read_records(path))) == 1
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert current.flush(timeout=30)
    records = list(read_records(path))
    assert len(records) == 21
    assert records == sorted(tokenmetry.sessions.default.calls, key=lambda r: r.started_at)


def test_a_missing_directory_warns_and_the_call_works(server: LocalAPIServer, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "missing" / "usage.db"
    with caplog.at_level(logging.WARNING, logger="tokenmetry"):
        tokenmetry.instrument(providers=["openai"], ledger=str(path))
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"tokenmetry: the usage ledger {path} is disabled: its directory {path.parent} does not exist"]
    assert ledger.current() is None
    completion = server.openai_client().chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert completion.choices[0].message.content == "Local reply to: How many tokens does this ledger hold"
    assert tokenmetry.sessions.default.usage == openai_truth(server.last_response.usage)  # type: ignore[union-attr]
    assert not path.parent.exists()


def test_a_directory_removed_after_start_warns_from_the_writer(server: LocalAPIServer, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "gone"
    directory.mkdir()
    path = directory / "usage.db"
    tokenmetry.instrument(providers=["openai"], ledger=str(path))
    shutil.rmtree(directory)  # before the writer opened the file
    with caplog.at_level(logging.WARNING, logger="tokenmetry"):
        server.openai_client().chat.completions.create(model="gpt-4o-mini", messages=USER)
        current = ledger.current()
        assert current is not None and current.flush() is False  # kept in memory, not written
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [(f"tokenmetry: cannot write the usage ledger {path} (OperationalError: unable to open "
                         "database file); calls are not affected, rows are kept in memory and retried")]
    assert tokenmetry.sessions.default.call_count == 1
    directory.mkdir()  # the directory is back: the writer retries on its own and the kept row is written
    deadline = time.monotonic() + 40  # retries back off from 1 s to at most 30 s
    while current.written == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert current.written == 1  # no new call and no flush was needed
    assert current.flush()
    assert list(read_records(path)) == tokenmetry.sessions.default.calls
    assert current.written == 1 and current.dropped == 0


_READ_ONLY_SCRIPT = textwrap.dedent("""
    import json, sys
    import tokenmetry, openai
    tokenmetry.instrument(providers=["openai"])  # the ledger comes from TOKENMETRY_LEDGER
    client = openai.OpenAI(api_key="test", base_url=sys.argv[1])
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi there"}])
    print(json.dumps(tokenmetry.sessions.default.usage.to_dict()))
""")


def test_a_read_only_directory_warns_and_the_call_works(server: LocalAPIServer, tmp_path: Path) -> None:
    directory = tmp_path / "read-only"
    directory.mkdir()
    path = directory / "usage.db"
    command = [sys.executable, "-c", _READ_ONLY_SCRIPT, server.url + "/v1"]
    if os.geteuid() == 0:
        # root writes through permission bits: make the directory a read-only mount in a private namespace
        if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], check=False).returncode != 0:
            pytest.skip("running as root without unprivileged user namespaces: cannot make a read-only directory")
        script = f"mount -t tmpfs -o ro tmpfs {directory} && exec \"$@\""
        command = ["unshare", "-rm", "sh", "-c", script, "sh", *command]
    else:
        directory.chmod(0o555)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENMETRY_", "OTEL_"))}
    env["TOKENMETRY_LEDGER"] = str(path)
    try:
        result = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=120)
    finally:
        directory.chmod(0o755)
    assert result.returncode == 0, result.stderr
    assert f"tokenmetry: the usage ledger {path} is disabled: its directory {directory} is not writable" \
        in result.stderr
    assert Usage(**{k: v for k, v in json.loads(result.stdout).items() if k != "total_tokens"}) == \
        openai_truth(server.last_response.usage)  # type: ignore[union-attr]
    assert not path.exists()


_WORKER_SCRIPT = textwrap.dedent("""
    import sys
    import tokenmetry, openai
    tokenmetry.instrument(providers=["openai"])  # the ledger comes from TOKENMETRY_LEDGER
    client = openai.OpenAI(api_key="test", base_url=sys.argv[1], max_retries=0)
    worker, calls = sys.argv[2], int(sys.argv[3])
    for i in range(calls):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"worker {worker} call {i} " + "w " * (i % 7)}])
    # no flush: the ledger must write what is left at exit
""")


def test_four_processes_share_one_file_and_lose_nothing(server: LocalAPIServer, tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENMETRY_", "OTEL_"))}
    env["TOKENMETRY_LEDGER"] = str(path)
    workers = [subprocess.Popen([sys.executable, "-c", _WORKER_SCRIPT, server.url + "/v1", str(n), "200"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for n in range(4)]
    pids = []
    for worker in workers:
        _, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr
        assert "tokenmetry" not in stderr  # no ledger warning
        pids.append(worker.pid)

    records = list(read_records(path))
    assert len(records) == 800
    truth = {r.response.response_id: openai_truth(r.response.usage)  # type: ignore[union-attr]
             for r in server.requests}
    assert len(truth) == 800
    assert sorted(r.response_id for r in records) == sorted(truth)  # type: ignore[type-var]
    for record in records:
        assert record.usage == truth[record.response_id]  # type: ignore[index]
    conn = sqlite3.connect(path)
    assert Counter(pid for (pid,) in conn.execute("SELECT pid FROM calls")) == {pid: 200 for pid in pids}
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _child_makes_calls(base_url: str, calls: int) -> None:
    client = openai.OpenAI(api_key="test", base_url=base_url)  # a client of its own: never share a pool
    for _ in range(calls):
        client.chat.completions.create(model="gpt-4o-mini", messages=USER)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_writes_only_its_own_calls(server: LocalAPIServer, tmp_path: Path) -> None:
    path = tmp_path / "forked.db"
    tokenmetry.instrument(providers=["openai"], ledger=str(path))
    server.openai_client().chat.completions.create(model="gpt-4o-mini", messages=USER)  # queued in the parent
    child = multiprocessing.get_context("fork").Process(target=_child_makes_calls, args=(server.url + "/v1", 3))
    child.start()
    child.join(120)
    assert child.exitcode == 0
    current = ledger.current()
    assert current is not None and current.flush()
    conn = sqlite3.connect(path)
    assert Counter(pid for (pid,) in conn.execute("SELECT pid FROM calls")) == {os.getpid(): 1, child.pid: 3}
    ids = [r.response_id for r in read_records(path)]
    assert sorted(ids) == sorted(r.response.response_id for r in server.requests)  # type: ignore[union-attr]
