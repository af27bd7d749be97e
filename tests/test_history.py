"""tokenmetry.history: a session's bounded history gives back every field of the calls it kept."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tokenmetry import pricing
from tokenmetry.config import resolve
from tokenmetry.history import CallHistory
from tokenmetry.usage import CallRecord, Usage


def fake_call(index: int, **fields: Any) -> Any:
    """A finished call as the lifecycle leaves it; details vary with ``index`` (None and 0 both)."""
    call = SimpleNamespace(
        provider="openai", operation="chat", request_model="gpt-4o", response_model="gpt-4o-2024-11-20",
        response_id=f"chatcmpl-{index}", usage_source="provider", stream=index % 2 == 0, error_type=None,
        finish_reasons=("stop",), server_address="api.openai.com", quote=None,
        input_tokens=1000 + index, output_tokens=10 * index,
        cache_read_tokens=[None, 0, 512][index % 3], cache_write_tokens=[None, 7][index % 2],
        reasoning_tokens=[0, None, 3][index % 3], tool_tokens=None if index % 4 else 2,
        cache_write_1h_tokens=None, retries=index % 3, turn=None if index % 2 else index,
        started_at=1_700_000_000.25 + index, duration_s=0.5 + index / 8,
        time_to_first_chunk_s=None if index % 2 else 0.125, throttle_wait_s=0.25 * (index % 3),
        retry_wait_s=0.0 if index % 2 else 1.5)
    for name, value in fields.items():
        setattr(call, name, value)
    return call


def expected_record(call: Any, session_id: str) -> CallRecord:
    usage = Usage(call.input_tokens, call.output_tokens, call.cache_read_tokens, call.cache_write_tokens,
                  call.reasoning_tokens, call.tool_tokens)
    cost = None if call.quote is None else call.quote.cost_of_call(call)
    return CallRecord(call.provider, call.operation, call.request_model, call.response_model, call.response_id,
                      usage, call.usage_source, cost, call.stream, call.started_at, call.duration_s,
                      call.time_to_first_chunk_s, call.retries, call.throttle_wait_s, call.error_type, session_id,
                      call.finish_reasons, call.server_address, call.turn, call.retry_wait_s)


def test_every_field_comes_back_and_the_newest_calls_are_kept_oldest_first() -> None:
    calls = [fake_call(index) for index in range(7)]
    history = CallHistory(3)
    added: list[Any] = []
    for batch in (calls[:2], calls[2:3], calls[3:7]):
        history.add(batch)
        added += batch
        assert history.records("s") == [expected_record(call, "s") for call in added[-3:]]
    assert len(history) == 3


def test_a_batch_longer_than_the_limit_keeps_its_newest_calls() -> None:
    calls = [fake_call(index) for index in range(10)]
    history = CallHistory(4)
    history.add(calls[:1])
    history.add(calls[1:])
    assert [record.response_id for record in history.records("s")] == [f"chatcmpl-{i}" for i in range(6, 10)]


def test_resize_keeps_the_newest_calls() -> None:
    calls = [fake_call(index) for index in range(9)]
    history = CallHistory(5)
    history.add(calls[:6])  # wrapped once: 1..5 kept
    history.resize(2)
    assert history.records("s") == [expected_record(call, "s") for call in calls[4:6]]
    history.resize(4)
    history.add(calls[6:9])
    assert history.records("s") == [expected_record(call, "s") for call in calls[5:9]]
    history.resize(0)
    history.add(calls)
    assert history.records("s") == [] and len(history) == 0


def test_cost_is_priced_from_the_usage_and_the_quote_kept() -> None:
    options = resolve({})
    calls = [fake_call(index, cache_write_1h_tokens=[None, 3][index % 2], reasoning_tokens=index * 2)
             for index in range(4)]
    for call in calls:
        call.quote = pricing.quote_call(call, options)
        assert call.quote is not None
    history = CallHistory(10)
    history.add(calls)
    records = history.records("s")
    assert records == [expected_record(call, "s") for call in calls]
    assert all(record.cost is not None and record.cost.amount > 0 for record in records)


def test_finish_reasons_are_shared_and_ids_copied() -> None:
    """What the history keeps of a call is not what the SDK made for it: the same reasons share one
    tuple, the response id is a copy (the SDK's objects die with the call, see the module)."""
    # (a second tuple with the same reasons, as the next response's would be)
    first, second = fake_call(1, finish_reasons=("stop",)), fake_call(2, finish_reasons=tuple(["stop"]))  # noqa: C409
    history = CallHistory(2)
    history.add([first, second])
    kept = history._names  # the storage itself is what is checked
    assert kept[0][8] is kept[1][8]
    assert kept[0][4] is not first.response_id and kept[0][4] == first.response_id.encode()
    odd = fake_call(3, response_id=None)
    history.add([odd])
    assert history.records("s")[-1].response_id is None
