"""Concurrency: sessions are context-local, so threads and asyncio tasks each account their own calls.

8 threads (four calls each) and 200 concurrent asyncio tasks (a streamed and a plain call each), each
in its own session, make calls (plain and streamed, chat and responses) with prompts of different lengths, so every session's truth differs.
Each request carries its session id in a header the server records: the truth of a session is the sum
of the usage the server sent for that session's requests, and every session's totals (and the
process's) must equal it exactly.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from test_openai_e2e import CHAT_MODEL, openai_client, usage_of

import tokenmetry
from tokenmetry.testing import LocalAPIServer, RecordedRequest, Reply
from tokenmetry.usage import CallRecord, Usage

HEADER = "x-test-session"
API_OF_KIND = {"openai.chat": "chat", "openai.responses": "responses", "openai.completions": "completions",
               "openai.embeddings": "embeddings"}


@pytest.fixture
def server() -> Iterator[LocalAPIServer]:
    with LocalAPIServer() as srv:
        yield srv


@pytest.fixture
def records() -> Iterator[list[CallRecord]]:
    found: list[CallRecord] = []
    lock = threading.Lock()

    def keep(record: CallRecord) -> None:
        with lock:
            found.append(record)

    unsubscribe = tokenmetry.on_record(keep)
    yield found
    unsubscribe()


def _prompt(session_index: int, call_index: int) -> str:
    # a different length for every (session, call): each session's truth differs from the others'
    return " ".join(["word"] * (3 + 7 * session_index + call_index))


def _short_reply(request: RecordedRequest) -> Reply:
    """A reply of 1-5 words chosen by the request's session: short streams keep 200 tasks quick."""
    index = int(request.headers[HEADER].rsplit("-", 1)[1])
    return Reply(text=" ".join(["fine"] * (1 + index % 5)))


def _truth_by_session(server: LocalAPIServer) -> tuple[dict[str, Usage], dict[str, set[str]]]:
    usage: dict[str, Usage] = defaultdict(Usage)
    ids: dict[str, set[str]] = defaultdict(set)
    for request in server.requests:
        sent = request.response
        assert sent is not None and sent.completed and sent.status == 200
        session_id = request.headers[HEADER]
        usage[session_id] = usage[session_id] + usage_of(sent.usage, API_OF_KIND[request.kind])
        ids[session_id].add(sent.response_id)
    return dict(usage), dict(ids)


def _check(server: LocalAPIServer, otel: Any, records: list[CallRecord], session_ids: list[str],
           calls_per_session: int) -> None:
    truth, ids = _truth_by_session(server)
    assert set(truth) == set(session_ids)
    total = Usage()
    for session_id in session_ids:
        session = tokenmetry.sessions.get(session_id)
        assert session is not None
        assert session.usage == truth[session_id], session_id
        assert session.call_count == calls_per_session
        assert {r.response_id for r in session.calls} == ids[session_id]
        assert all(r.session_id == session_id and r.usage_source == "provider" for r in session.calls)
        total = total + truth[session_id]
    assert len({truth[s].input_tokens for s in session_ids}) == len(session_ids)  # the truths all differ
    assert tokenmetry.sessions.default.call_count == 0
    snapshot = tokenmetry.stats()
    assert snapshot.usage == total
    assert snapshot.requests == len(session_ids) * calls_per_session == len(records)
    assert sum((r.usage for r in records), Usage()) == total
    # every span names the session of the request that produced it
    session_of_response = {rid: sid for sid, rids in ids.items() for rid in rids}
    spans = otel.finished_spans()
    assert len(spans) == len(records)
    for span in spans:
        assert span.attributes["gen_ai.conversation.id"] == session_of_response[span.attributes["gen_ai.response.id"]]
    token_points = otel.metric_points("gen_ai.client.token.usage")
    by_type: dict[str, int] = defaultdict(int)
    for point in token_points:
        by_type[point.attributes["gen_ai.token.type"]] += int(point.sum)
    assert dict(by_type) == {"input": total.input_tokens, "output": total.output_tokens}


def test_threads_each_in_their_own_session(server: LocalAPIServer, otel: Any, records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    threads_count, calls = 8, 4
    session_ids = [f"thread-{i}" for i in range(threads_count)]
    errors: list[BaseException] = []
    start = threading.Barrier(threads_count)

    def work(index: int, client: Any) -> None:
        try:
            session_id = session_ids[index]
            headers = {HEADER: session_id}
            start.wait()
            with tokenmetry.session(session_id):
                client.chat.completions.create(model=CHAT_MODEL, extra_headers=headers,
                                               messages=[{"role": "user", "content": _prompt(index, 0)}])
                for _ in client.chat.completions.create(
                        model=CHAT_MODEL, stream=True, extra_headers=headers,
                        messages=[{"role": "user", "content": _prompt(index, 1)}]):
                    pass
                client.responses.create(model=CHAT_MODEL, input=_prompt(index, 2), extra_headers=headers)
                with client.responses.stream(model=CHAT_MODEL, input=_prompt(index, 3),
                                             extra_headers=headers) as stream:
                    for _ in stream:
                        pass
            assert tokenmetry.current_session() is tokenmetry.sessions.default
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    with openai_client(server) as client:
        threads = [threading.Thread(target=work, args=(i, client)) for i in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert errors == []
    _check(server, otel, records, session_ids, calls)


async def test_200_asyncio_tasks_each_in_their_own_session(server: LocalAPIServer, otel: Any,
                                                           records: list[CallRecord]) -> None:
    tokenmetry.instrument(**otel.kwargs())
    tasks_count, calls = 200, 2
    session_ids = [f"task-{i}" for i in range(tasks_count)]
    server.enqueue("openai", *[_short_reply] * (tasks_count * calls))
    started = asyncio.Event()

    async def work(index: int, client: Any) -> None:
        session_id = session_ids[index]
        headers = {HEADER: session_id}
        chat = {"model": CHAT_MODEL, "extra_headers": headers}
        async with tokenmetry.session(session_id) as session:
            await started.wait()  # all 200 in flight at once
            if index % 2:  # a streamed chat call, then a plain Responses call
                stream = await client.chat.completions.create(
                    **chat, stream=True, messages=[{"role": "user", "content": _prompt(index, 0)}])
                async for _ in stream:
                    pass
                await client.responses.create(**chat, input=_prompt(index, 1))
            else:  # a streamed Responses call, then a plain chat call
                async for _ in await client.responses.create(**chat, input=_prompt(index, 0), stream=True):
                    pass
                await client.chat.completions.create(**chat, messages=[{"role": "user", "content": _prompt(index, 1)}])
            assert tokenmetry.current_session() is session

    async with openai_client(server, async_=True) as client:
        tasks = [asyncio.create_task(work(i, client)) for i in range(tasks_count)]
        await asyncio.sleep(0)
        started.set()
        await asyncio.gather(*tasks)
    assert tokenmetry.current_session() is tokenmetry.sessions.default
    _check(server, otel, records, session_ids, calls)


def test_one_session_shared_by_threads(server: LocalAPIServer, records: list[CallRecord]) -> None:
    """The same Session entered by several threads at once: every call lands in it, exits do not clash."""
    tokenmetry.instrument()
    shared = tokenmetry.session("shared")
    errors: list[BaseException] = []

    def work(index: int, client: Any) -> None:
        try:
            with shared:
                for call in range(3):
                    client.chat.completions.create(model=CHAT_MODEL, extra_headers={HEADER: "shared"},
                                                   messages=[{"role": "user", "content": _prompt(index, call)}])
            assert tokenmetry.current_session() is tokenmetry.sessions.default
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    with openai_client(server) as client:
        threads = [threading.Thread(target=work, args=(i, client)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert errors == []
    truth, _ = _truth_by_session(server)
    assert shared.usage == truth["shared"]
    assert shared.call_count == 18 == len(records)
    assert tokenmetry.stats().usage == truth["shared"]
