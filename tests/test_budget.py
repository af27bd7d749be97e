"""Budgets: refused before anything is sent, concurrent calls cannot overshoot, warn mode proceeds."""

from __future__ import annotations

import asyncio
import logging
import threading
from decimal import Decimal

import pytest

import tokenmetry
from tokenmetry.counting import count_tokens
from tokenmetry.testing import LocalAPIServer, Reply

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "hello"}]
MAX_OUTPUT = 3


@pytest.fixture
def server():
    with LocalAPIServer() as running:
        yield running


def per_call_estimate() -> int:
    """What the budget reserves for one call: the prompt with its chat framing plus max_tokens."""
    return count_tokens(MODEL, MESSAGES).tokens + MAX_OUTPUT


def test_a_call_that_would_pass_the_limit_is_refused_before_sending(server, otel):
    tokenmetry.instrument(**otel.kwargs())
    client = server.openai_client()
    budget = tokenmetry.Budget(max_tokens=per_call_estimate() - 1)
    with tokenmetry.session("tight", budget=budget) as session:
        with pytest.raises(tokenmetry.BudgetExceeded) as caught:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=MAX_OUTPUT)
    assert server.requests == []
    error = caught.value
    assert (error.kind, error.used, error.would_add, error.limit) == (
        "tokens", 0, per_call_estimate(), per_call_estimate() - 1)
    assert "tight" in str(error) and str(per_call_estimate() - 1) in str(error)
    assert session.calls == [] and session.usage.total_tokens == 0
    assert otel.finished_spans() == []
    assert budget.used_tokens == 0 and budget._reserved_tokens == 0


def test_used_tokens_settle_to_the_exact_usage(server):
    tokenmetry.instrument()
    client = server.openai_client()
    budget = tokenmetry.Budget(max_tokens=10_000)
    with tokenmetry.session("settled", budget=budget) as session:
        for words in ("one", "one two three", "one two three four five six"):
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": words}],
                                           max_tokens=MAX_OUTPUT)
    truth = sum(r.usage["total_tokens"] for r in server.responses)
    assert budget.used_tokens == truth == session.usage.total_tokens
    assert budget._reserved_tokens == 0
    assert budget.remaining_tokens == 10_000 - truth


def _scripted_replies(server: LocalAPIServer, count: int) -> int:
    """Make each allowed call use exactly what the budget reserved for it; returns that figure."""
    estimate = per_call_estimate()
    server.enqueue("openai.chat", *[Reply(usage={"prompt_tokens": estimate - MAX_OUTPUT,
                                                 "completion_tokens": MAX_OUTPUT})
                                    for _ in range(count)])
    return estimate


def test_fifty_concurrent_threads_never_exceed_a_budget_for_ten(server):
    tokenmetry.instrument()
    estimate = _scripted_replies(server, 10)
    budget = tokenmetry.Budget(max_tokens=10 * estimate)
    client = server.openai_client()
    start = threading.Barrier(50)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        with tokenmetry.session("shared", budget=budget):
            start.wait()
            try:
                client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=MAX_OUTPUT)
                outcome = "sent"
            except tokenmetry.BudgetExceeded:
                outcome = "refused"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("sent") == 10 and outcomes.count("refused") == 40
    assert len(server.requests) == 10
    assert budget.used_tokens == 10 * estimate <= budget.max_tokens
    assert tokenmetry.sessions.get("shared").usage.total_tokens == 10 * estimate
    assert budget._reserved_tokens == 0


async def test_fifty_concurrent_tasks_never_exceed_a_budget_for_ten(server):
    tokenmetry.instrument()
    estimate = _scripted_replies(server, 10)
    budget = tokenmetry.Budget(max_tokens=10 * estimate)
    client = server.openai_client(async_=True)

    async def task() -> str:
        with tokenmetry.session("async-shared", budget=budget):
            try:
                await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=MAX_OUTPUT)
                return "sent"
            except tokenmetry.BudgetExceeded:
                return "refused"

    outcomes = await asyncio.gather(*(task() for _ in range(50)))
    assert outcomes.count("sent") == 10 and outcomes.count("refused") == 40
    assert len(server.requests) == 10
    assert budget.used_tokens == 10 * estimate
    assert budget._reserved_tokens == 0


def test_warn_mode_logs_and_proceeds(server, caplog):
    tokenmetry.instrument()
    client = server.openai_client()
    budget = tokenmetry.Budget(max_tokens=1, mode="warn")
    with caplog.at_level(logging.WARNING, logger="tokenmetry"):
        with tokenmetry.session("warned", budget=budget) as session:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=MAX_OUTPUT)
    assert len(server.requests) == 1
    warnings = [r for r in caplog.records if r.name == "tokenmetry" and r.levelno == logging.WARNING]
    assert any("budget 1 would be passed" in r.getMessage() and "warn" in r.getMessage() for r in warnings)
    truth = server.responses[0].usage["total_tokens"]
    assert session.usage.total_tokens == truth == budget.used_tokens


def test_cost_budget_refuses_before_sending(server):
    tokenmetry.instrument()
    client = server.openai_client()
    budget = tokenmetry.Budget(max_cost="0.0000001")
    with tokenmetry.session("cheap", budget=budget):
        with pytest.raises(tokenmetry.BudgetExceeded) as caught:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=100)
    assert server.requests == []
    assert caught.value.kind == "cost" and caught.value.limit == Decimal("0.0000001")
    assert caught.value.would_add > Decimal("0.0000001")


@pytest.mark.parametrize("kwargs", [
    {}, {"max_tokens": -1}, {"max_tokens": 1.5}, {"max_cost": "abc"}, {"max_cost": -2},
    {"max_tokens": 10, "mode": "block"}, {"max_tokens": 10, "default_output_tokens": -3},
])
def test_bad_budget_arguments_are_named(kwargs):
    with pytest.raises(tokenmetry.TokenmetryError) as caught:
        tokenmetry.Budget(**kwargs)
    assert "Budget" in str(caught.value)
