"""responses.retrieve returns a stored response with the usage its creation was billed for."""

from __future__ import annotations

import tokenmetry
from tokenmetry.testing import LocalAPIServer, Reply
from tokenmetry.usage import Usage


def test_retrieving_a_counted_response_adds_no_tokens(otel) -> None:
    tokenmetry.instrument(**otel.kwargs())
    with LocalAPIServer() as server, tokenmetry.session("retrieve") as session:
        client = server.openai_client()
        created = client.responses.create(model="gpt-4o-mini", input="count me once please")
        sent = server.responses[0].usage
        once = Usage(sent["input_tokens"], sent["output_tokens"], 0, None, 0)
        again = client.responses.retrieve(created.id)
        assert again.usage.input_tokens == sent["input_tokens"]  # the user still sees the stored usage
        assert session.usage == once
        first, second = session.calls
        assert first.usage == once and second.usage == Usage(0, 0)
        assert second.usage_source == "provider" and second.response_id == created.id
        spans = otel.finished_spans()
        assert spans[1].attributes["tokenmetry.usage.already_counted"] is True
        assert spans[1].attributes["gen_ai.usage.input_tokens"] == 0


def test_a_background_response_is_counted_when_retrieved_complete(otel) -> None:
    tokenmetry.instrument(**otel.kwargs())
    completed = {
        "id": "resp_background_1", "object": "response", "created_at": 1, "model": "gpt-4o-mini",
        "status": "completed", "output": [], "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        "usage": {"input_tokens": 7, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5,
                  "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 12},
    }
    queued = {**completed, "status": "queued"}
    del queued["usage"]
    with LocalAPIServer() as server, tokenmetry.session("background") as session:
        client = server.openai_client()
        server.enqueue("openai.responses", Reply(body=queued))  # background=True: queued, no usage yet
        created = client.responses.create(model="gpt-4o-mini", input="later please", background=True)
        assert created.usage is None and created.status == "queued"
        assert session.calls[0].usage == Usage(0, 0)  # nothing generated yet, nothing estimated
        server.enqueue("openai.responses.retrieve", Reply(body=completed), Reply(body=completed))
        done = client.responses.retrieve(created.id)
        assert done.usage.total_tokens == 12
        assert session.calls[1].usage == Usage(7, 5, 0, None, 0)
        assert session.calls[1].usage_source == "provider"
        client.responses.retrieve(created.id)  # polled again once complete: counted once
        assert session.calls[2].usage == Usage(0, 0)
        assert session.usage == Usage(7, 5, 0, None, 0)
