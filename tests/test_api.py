"""The public API surface: instrument / uninstrument / wrap, on_record, configuration errors, the data
types (arithmetic, None semantics, ``to_dict()``) and the ``stats()`` snapshot."""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import sys
import types
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx2
import openai
import pytest
import wrapt
from test_openai_e2e import CHAT_MODEL, MESSAGES, openai_client, truth_of, usage_of

import tokenmetry
from tokenmetry.instrumentation import instrumented
from tokenmetry.testing import LocalAPIServer, Reply
from tokenmetry.usage import CallRecord, Cost, ModelStats, PerformanceSnapshot, TokenCount, Usage

PATCHED = ("request", "_sleep_for_retry", "_process_response")
SDK_PREFIXES = ("openai", "anthropic", "google.genai")


@pytest.fixture(scope="module")
def shared_server() -> Iterator[LocalAPIServer]:
    with LocalAPIServer() as server:
        yield server


@pytest.fixture
def server(shared_server: LocalAPIServer) -> Iterator[LocalAPIServer]:
    shared_server.reset()
    yield shared_server
    shared_server.reset()


@pytest.fixture
def records() -> Iterator[list[CallRecord]]:
    found: list[CallRecord] = []
    unsubscribe = tokenmetry.on_record(found.append)
    yield found
    unsubscribe()


def _chat(client: Any, **extra: Any) -> Any:
    return client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, **extra)


def _client_classes() -> list[type]:
    base = sys.modules["openai._base_client"]
    return [base.SyncAPIClient, base.AsyncAPIClient]


def _lazy(key: str) -> bool:
    # what pydantic builds on first use of a model class, not anything tokenmetry patches
    return key.startswith("__pydantic_") or key == "__signature__"


def _sdk_namespaces() -> dict[Any, dict[str, Any]]:
    """A copy of the namespace of every class and module of the installed SDKs."""
    found: dict[Any, dict[str, Any]] = {}
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(SDK_PREFIXES):
            continue
        found[module] = dict(vars(module))
        for value in list(vars(module).values()):
            # type(), not isinstance(): the SDKs' lazy proxies would import their targets on isinstance()
            if issubclass(type(value), type) and value.__module__ == name:
                found[value] = {k: v for k, v in vars(value).items() if not _lazy(k)}
    return found


# ================================================================================ instrument / uninstrument
def test_instrument_is_idempotent_and_uninstrument_restores_the_exact_objects(
        server: LocalAPIServer, records: list[CallRecord]) -> None:
    tokenmetry.instrument()  # imports every SDK module the adapters touch
    tokenmetry.uninstrument()
    with openai_client(server) as client:
        _chat(client)  # warms the SDK's lazily built classes
    originals = {(cls, name): cls.__dict__[name] for cls in _client_classes() for name in PATCHED}
    for (cls, name), original in originals.items():
        # the SDK's own functions, not a leftover wrapper
        assert inspect.isfunction(original) and original.__module__ == "openai._base_client", (cls, name)
    before = _sdk_namespaces()

    assert "openai" in tokenmetry.instrument()
    first = {key: key[0].__dict__[key[1]] for key in originals}
    for key, wrapper in first.items():
        assert isinstance(wrapper, wrapt.FunctionWrapper)
        assert wrapper.__wrapped__ is originals[key]  # wrapping the SDK's function, once
    assert tokenmetry.instrument() == instrumented()
    assert {key: key[0].__dict__[key[1]] for key in originals} == first  # the second call patched nothing
    assert all(key[0].__dict__[key[1]] is first[key] for key in originals)

    with openai_client(server) as client:
        _chat(client)
    assert len(records) == 1  # recorded once, not once per instrument() call

    tokenmetry.uninstrument()
    tokenmetry.uninstrument()  # twice is harmless
    assert instrumented() == []
    after = _sdk_namespaces()
    for owner, namespace in before.items():
        current = after[owner]
        if isinstance(owner, types.ModuleType):
            # submodules imported meanwhile may appear on their package; nothing else may change
            extra = set(current) - set(namespace)
            assert all(isinstance(current[k], types.ModuleType) for k in extra), owner
            changed = [k for k in namespace if current.get(k) is not namespace[k]]
        else:
            # (pydantic adds attributes such as __signature__ lazily; a patch left behind would be a wrapper)
            extra = set(current) - set(namespace)
            assert not any(isinstance(current[k], wrapt.ObjectProxy) for k in extra), owner
            changed = [k for k in namespace if current.get(k) is not namespace[k]]
        assert changed == [], (owner, changed)
    with openai_client(server) as client:
        _chat(client)
    assert len(records) == 1


def test_instrument_returns_and_selects_providers(server: LocalAPIServer, records: list[CallRecord]) -> None:
    assert tokenmetry.instrument(providers="openai") == ["openai"]
    assert instrumented() == ["openai"]
    assert tokenmetry.instrument(providers=["OpenAI"]) == ["openai"]
    with openai_client(server) as client:
        _chat(client)
    assert len(records) == 1


def test_instrument_reconfigures_without_repatching(server: LocalAPIServer, records: list[CallRecord]) -> None:
    tokenmetry.instrument()
    tokenmetry.instrument(history_limit=1)
    with openai_client(server) as client:
        _chat(client)
        _chat(client)
    assert len(records) == 2
    assert len(tokenmetry.current_session().calls) == 1


def test_reconfiguring_keeps_the_cost_and_token_counters_counting(server: LocalAPIServer, otel: Any,
                                                                   records: list[CallRecord]) -> None:
    """instrument() again (same meter provider) must not leave tokenmetry.cost / tokenmetry.tokens
    stuck: the SDK keeps an observable instrument's first callbacks and drops a duplicate's."""
    tokenmetry.instrument(**otel.kwargs())
    with openai_client(server) as client:
        _chat(client)
        assert [p.value for p in otel.metric_points("tokenmetry.cost")] == [float(records[0].cost.amount)]
        tokenmetry.instrument(**otel.kwargs())
        _chat(client)
        tokenmetry.instrument(history_limit=5, **otel.kwargs())
        _chat(client)
    assert len(records) == 3 and all(r.cost is not None for r in records)
    [point] = otel.metric_points("tokenmetry.cost")
    assert point.value == pytest.approx(sum(float(r.cost.amount) for r in records), rel=1e-12)  # type: ignore[union-attr]
    [duration] = otel.metric_points("gen_ai.client.operation.duration")
    assert duration.count == 3


def test_running_totals_never_wait_for_their_lock() -> None:
    """A finaliser can finish a call (and add to a counter's totals) while its thread is inside the
    counter's collection: adding must not wait for the lock that thread holds."""
    from tokenmetry.telemetry import _RunningTotals

    totals = _RunningTotals()
    totals.add(("a",), {"k": "a"}, 1.5)
    with totals._lock:  # as if a finaliser ran in the middle of observe()
        totals.add(("a",), {"k": "a"}, 2.0)
        totals.add(("b",), {"k": "b"}, 4.0)
    observed = {tuple(o.attributes.items()): o.value for o in totals.observe(None)}  # type: ignore[arg-type]
    assert observed == {(("k", "a"),): 3.5, (("k", "b"),): 4.0}


def test_on_record_callbacks_see_their_call_in_the_session(server: LocalAPIServer) -> None:
    """A callback reading its session's totals sees the call it is told about (as before batching)."""
    tokenmetry.instrument()
    seen: list[tuple[int, int | None]] = []
    unsubscribe = tokenmetry.on_record(
        lambda record: seen.append((tokenmetry.sessions.get(record.session_id).call_count,  # type: ignore[union-attr]
                                    record.usage.input_tokens)))
    try:
        with openai_client(server) as client, tokenmetry.session("watched") as session:
            _chat(client)
            _chat(client)
    finally:
        unsubscribe()
    assert [count for count, _ in seen] == [1, 2]
    assert session.usage.input_tokens == sum(tokens for _, tokens in seen)  # type: ignore[misc]


# ================================================================================ wrap
def test_wrap_one_client_only(server: LocalAPIServer, records: list[CallRecord]) -> None:
    originals = {(cls, name): cls.__dict__[name] for cls in _client_classes() for name in PATCHED}
    with openai_client(server) as wrapped, openai_client(server) as other:
        assert tokenmetry.wrap(wrapped) is wrapped
        assert tokenmetry.wrap(wrapped) is wrapped  # twice: still one record per call
        assert instrumented() == []
        _chat(wrapped)
        _chat(other)
        list(_chat(wrapped, stream=True))
        copy = wrapped.with_options(max_retries=0)
        _chat(copy)
    # the classes were never touched
    assert all(cls.__dict__[name] is original for (cls, name), original in originals.items())
    assert not any(name in vars(other) for name in PATCHED)
    assert len(records) == 3
    sent = server.responses
    assert [r.response_id for r in records] == [sent[0].response_id, sent[2].response_id, sent[3].response_id]
    assert records[1].usage == truth_of(sent[2], "chat").usage and records[1].stream
    assert "stream_options" in server.requests[2].json and "stream_options" not in server.requests[1].json


async def test_wrap_async_client(server: LocalAPIServer, records: list[CallRecord]) -> None:
    async with openai_client(server, async_=True) as client:
        assert tokenmetry.wrap(client) is client
        await _chat(client)
        stream = await _chat(client, stream=True)
        chunks = [c async for c in stream]
    assert all(c.choices for c in chunks)
    assert [r.usage for r in records] == [truth_of(s, "chat").usage for s in server.responses]


def test_wrapped_client_retries_counted_once(server: LocalAPIServer, records: list[CallRecord]) -> None:
    server.enqueue("openai.chat", Reply(status=429, headers={"retry-after-ms": "10"}))
    with openai_client(server) as client:
        tokenmetry.wrap(client)
        _chat(client)
    assert records[0].retries == 1 and 0 < records[0].throttle_wait_s < 0.6


def test_wrap_and_instrument_together_count_a_retry_once(server: LocalAPIServer, records: list[CallRecord]) -> None:
    tokenmetry.instrument()
    server.enqueue("openai.chat", Reply(status=429, headers={"retry-after-ms": "10"}))
    with openai_client(server) as client:
        tokenmetry.wrap(client)
        _chat(client)
    assert len(records) == 1
    assert records[0].retries == 1


def test_wrap_and_instrument_together_record_a_call_once(server: LocalAPIServer, records: list[CallRecord]) -> None:
    with openai_client(server) as client:
        tokenmetry.wrap(client)
        tokenmetry.instrument()
        _chat(client)
        list(_chat(client, stream=True))
    assert len(records) == 2
    assert [r.usage for r in records] == [truth_of(s, "chat").usage for s in server.responses]


@pytest.mark.parametrize("thing", [object(), "openai", None, 42, httpx2.Client(), openai.types.chat.ChatCompletion],
                         ids=["object", "str", "None", "int", "httpx2-client", "a-class"])
def test_wrap_unsupported_object_raises(thing: Any) -> None:
    with pytest.raises(tokenmetry.TokenmetryError, match="not a client of a supported SDK"):
        tokenmetry.wrap(thing)


# ================================================================================ on_record
def test_on_record_unsubscribe_and_failing_callbacks(server: LocalAPIServer,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    tokenmetry.instrument()
    seen: list[CallRecord] = []
    later: list[CallRecord] = []

    def broken(record: CallRecord) -> None:
        raise RuntimeError("subscriber bug")

    unsubscribe = tokenmetry.on_record(seen.append)
    unsubscribe_broken = tokenmetry.on_record(broken)
    unsubscribe_later = tokenmetry.on_record(later.append)
    with openai_client(server) as client, caplog.at_level(logging.ERROR, logger="tokenmetry"):
        completion = _chat(client)  # returns normally despite the broken subscriber
        assert completion.id == server.last_response.response_id
        assert len(seen) == 1 and later == seen  # the others still got the record
        failures = [r for r in caplog.records if r.name == "tokenmetry" and r.exc_info]
        assert len(failures) == 1 and "on_record callback" in failures[0].getMessage()
        assert isinstance(failures[0].exc_info[1], RuntimeError)
        unsubscribe()
        unsubscribe()  # twice is harmless
        unsubscribe_broken()
        _chat(client)
    assert len(seen) == 1
    assert len(later) == 2
    assert later[0].usage == truth_of(server.responses[0], "chat").usage
    unsubscribe_later()
    with pytest.raises(tokenmetry.TokenmetryError):
        tokenmetry.on_record("not callable")  # type: ignore[arg-type]


# ================================================================================ configuration errors
@pytest.mark.parametrize(("kwargs", "key"), [
    ({"history_limit": -1}, "history_limit"),
    ({"history_limit": "many"}, "history_limit"),
    ({"tpm_window_s": 0}, "tpm_window_s"),
    ({"capture_content": "maybe"}, "capture_content"),
    ({"inject_stream_usage": "perhaps"}, "inject_stream_usage"),
    ({"currency": "dollars"}, "currency"),
    ({"exporter": "carrier-pigeon"}, "exporter"),
    ({"no_such_option": 1}, "no_such_option"),
    ({"providers": ["nope"]}, "providers"),
])
def test_bad_instrument_arguments_raise_config_error(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(tokenmetry.ConfigError) as info:
        tokenmetry.instrument(**kwargs)
    error = info.value
    assert isinstance(error, tokenmetry.TokenmetryError) and isinstance(error, ValueError)
    assert error.source == "keyword arguments"
    assert error.key == key
    given = next(iter(kwargs.values()))
    assert error.value == (given[0] if key == "providers" else given)
    assert error.accepted and key in str(error) and error.accepted in str(error)
    assert instrumented() == []  # nothing was patched


# ================================================================================ data types
def test_usage_arithmetic_and_none_semantics() -> None:
    a = Usage(10, 5, cache_read_tokens=4, reasoning_tokens=None)
    b = Usage(3, 2, cache_read_tokens=None, cache_write_tokens=1, reasoning_tokens=2)
    total = a + b
    assert total == Usage(13, 7, 4, 1, 2, None)
    assert total.total_tokens == 20
    assert Usage(1, 1) + Usage(2, 2) == Usage(3, 3, None, None, None, None)  # None + None stays None
    assert Usage(1, 1, cache_read_tokens=0) + Usage(1, 1) == Usage(2, 2, cache_read_tokens=0)  # 0 is not None
    assert sum([a, b]) == total
    assert sum([], Usage()) == Usage()
    assert Usage().total_tokens == 0
    with pytest.raises(TypeError):
        a + 1  # type: ignore[operator]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.input_tokens = 1  # type: ignore[misc]
    # cache tokens are part of the input: never added to the total again
    assert Usage(100, 10, cache_read_tokens=80, cache_write_tokens=20).total_tokens == 110


def test_cost_arithmetic() -> None:
    a = Cost(Decimal("0.10"), "USD", input=Decimal("0.04"), output=Decimal("0.06"))
    b = Cost(Decimal("0.05"), "USD", input=Decimal("0.01"), output=None, cache_read=Decimal("0.04"),
             source="override")
    total = a + b
    assert total == Cost(Decimal("0.15"), "USD", Decimal("0.05"), Decimal("0.06"), Decimal("0.04"), None, "mixed")
    assert sum([a, b]) == total
    with pytest.raises(ValueError, match="EUR"):
        a + Cost(Decimal(1), "EUR")
    with pytest.raises(TypeError):
        a + 1  # type: ignore[operator]


def test_to_dict_of_every_data_type(server: LocalAPIServer, records: list[CallRecord]) -> None:
    tokenmetry.instrument()
    with openai_client(server) as client, tokenmetry.session("to-dict") as session, session.turn():
        _chat(client)
    record = records[0]
    truth = truth_of(server.last_response, "chat")
    assert record.to_dict() == {
        "provider": "openai", "operation": "chat", "request_model": CHAT_MODEL,
        "response_model": truth.response_model, "response_id": truth.response_id,
        "usage": truth.usage.to_dict(), "usage_source": "provider",
        "cost": None if record.cost is None else record.cost.to_dict(), "stream": False,
        "started_at": record.started_at, "duration_s": record.duration_s, "time_to_first_chunk_s": None,
        "retries": 0, "throttle_wait_s": 0.0, "retry_wait_s": 0.0, "error_type": None, "session_id": "to-dict",
        "finish_reasons": ["stop"], "server_address": "127.0.0.1", "turn": 1,
    }
    assert truth.usage.to_dict() == {
        "input_tokens": truth.usage.input_tokens, "output_tokens": truth.usage.output_tokens,
        "cache_read_tokens": 0, "cache_write_tokens": None, "reasoning_tokens": 0, "tool_tokens": None,
        "total_tokens": truth.usage.input_tokens + truth.usage.output_tokens}
    cost = Cost(Decimal("0.0012"), "USD", Decimal("0.001"), Decimal("0.0002"), None, None)
    assert cost.to_dict() == {"amount": "0.0012", "currency": "USD", "input": "0.001", "output": "0.0002",
                              "cache_read": None, "cache_write": None, "source": "genai-prices"}
    count = tokenmetry.count_tokens(CHAT_MODEL, text="hello world")
    assert isinstance(count, TokenCount)
    assert count.to_dict() == {"tokens": count.tokens, "exact": count.exact, "method": count.method}
    snapshot = tokenmetry.stats()
    model = snapshot.by_model[f"openai/{truth.response_model}"]
    assert isinstance(model, ModelStats)
    assert model.to_dict() == {
        "tokens_per_minute": model.tokens_per_minute, "work_rate_tpm": model.work_rate_tpm,
        "throttle_wait_s": 0.0, "retry_wait_s": 0.0, "throttle_events": 0, "retries": 0, "requests": 1,
        "errors": 0, "usage": truth.usage.to_dict(), "rate_limit_remaining": {}}
    exported = snapshot.to_dict()
    assert exported["by_model"] == {f"openai/{truth.response_model}": model.to_dict()}
    assert exported["by_provider"] == {"openai": snapshot.by_provider["openai"].to_dict()}
    assert exported["usage"] == truth.usage.to_dict()
    assert set(exported) == {f.name for f in dataclasses.fields(PerformanceSnapshot)}
    for value in (record.to_dict(), exported, count.to_dict(), session.summary()):
        json.dumps(value)  # plain data, ready for export


def test_stats_structure(server: LocalAPIServer, records: list[CallRecord]) -> None:
    tokenmetry.instrument()
    server.response_models["gpt-4o"] = "gpt-4o-2024-11-20"
    with openai_client(server, max_retries=0) as client:
        _chat(client)
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        client.embeddings.create(model="text-embedding-3-small", input="a b c", encoding_format="float")
        server.enqueue("openai.chat", Reply(status=400))
        with pytest.raises(openai.BadRequestError):
            _chat(client)
    sent = server.responses
    truths = [usage_of(sent[0].usage, "chat"), usage_of(sent[1].usage, "chat"),
              usage_of(sent[2].usage, "embeddings")]
    snapshot = tokenmetry.stats()
    assert isinstance(snapshot, PerformanceSnapshot)
    assert (snapshot.requests, snapshot.errors, snapshot.retries, snapshot.throttle_events) == (4, 1, 0, 0)
    assert snapshot.usage == truths[0] + truths[1] + truths[2]
    assert snapshot.throttle_wait_s == 0.0 and snapshot.retry_wait_s == 0.0
    assert set(snapshot.by_provider) == {"openai"}
    assert set(snapshot.by_model) == {f"openai/{CHAT_MODEL}", "openai/gpt-4o-2024-11-20",
                                      "openai/text-embedding-3-small"}
    mini = snapshot.by_model[f"openai/{CHAT_MODEL}"]
    assert (mini.requests, mini.errors, mini.usage) == (2, 1, truths[0])  # the failed call has no response model
    assert snapshot.by_model["openai/gpt-4o-2024-11-20"].usage == truths[1]
    assert snapshot.by_model["openai/text-embedding-3-small"].usage == truths[2]
    assert snapshot.by_provider["openai"].usage == snapshot.usage
    assert snapshot.tokens_per_minute == float(snapshot.usage.total_tokens)  # all inside the 60 s window
    busy = sum(r.duration_s for r in records if r.usage.total_tokens)  # calls that produced no token are not work
    assert snapshot.work_rate_tpm == pytest.approx(60.0 * snapshot.usage.total_tokens / busy, rel=1e-9)
    assert snapshot.rate_limit_remaining == {}


def test_public_names() -> None:
    for name in tokenmetry.__all__:
        assert getattr(tokenmetry, name) is not None, name
    with pytest.raises(AttributeError):
        tokenmetry.no_such_thing  # type: ignore[attr-defined]  # noqa: B018
    assert callable(tokenmetry.retry_hooks) and callable(tokenmetry.retry) and callable(tokenmetry.price)
    assert tokenmetry.current_session() is tokenmetry.sessions.default
