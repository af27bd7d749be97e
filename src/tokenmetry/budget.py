"""Budgets on a session: refuse a call before it is sent when it would pass the limit.

Before each call the budget reserves the call's pre-call estimate (prompt tokens counted offline,
plus the output the request allows: ``max_tokens`` / ``max_completion_tokens`` /
``max_output_tokens``); after the call it settles the reservation with the exact usage. Concurrent
calls in one session therefore cannot overshoot together: each sees the others' reservations.

A request that sets no output limit reserves ``default_output_tokens`` (0 unless given), so for a
hard guarantee set an output limit on the requests, or a default here.
"""

from __future__ import annotations

import logging
import threading
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .errors import BudgetExceeded, TokenmetryError

if TYPE_CHECKING:
    from .call import Call

__all__ = ["Budget"]

logger = logging.getLogger("tokenmetry")
_OUTPUT_LIMIT_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


class Budget:
    """A token and/or cost limit for a session.

    >>> import tokenmetry
    >>> with tokenmetry.session("user-7", budget=tokenmetry.Budget(max_tokens=50_000)):  # doctest: +SKIP
    ...     client.chat.completions.create(...)  # raises BudgetExceeded once 50k would be passed
    """

    def __init__(self, max_tokens: int | None = None, max_cost: Decimal | float | str | None = None,
                 mode: str = "raise", *, default_output_tokens: int = 0) -> None:
        if max_tokens is None and max_cost is None:
            raise TokenmetryError("Budget needs max_tokens, max_cost or both")
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                       or max_tokens < 0):
            raise TokenmetryError(f"Budget max_tokens must be an integer >= 0, got {max_tokens!r}")
        if max_cost is not None:
            try:
                max_cost = Decimal(str(max_cost))
            except ArithmeticError:
                raise TokenmetryError(f"Budget max_cost must be a number, got {max_cost!r}") from None
            if not max_cost.is_finite() or max_cost < 0:
                raise TokenmetryError(f"Budget max_cost must be a number >= 0, got {max_cost!r}")
        if mode not in ("raise", "warn"):
            raise TokenmetryError(f"Budget mode must be 'raise' or 'warn', got {mode!r}")
        if not isinstance(default_output_tokens, int) or default_output_tokens < 0:
            raise TokenmetryError(
                f"Budget default_output_tokens must be an integer >= 0, got {default_output_tokens!r}")
        self.max_tokens = max_tokens
        self.max_cost: Decimal | None = max_cost
        self.mode = mode
        self.default_output_tokens = default_output_tokens
        self._lock = threading.Lock()
        self.used_tokens = 0
        self.used_cost = Decimal(0)
        self._reserved_tokens = 0
        self._reserved_cost = Decimal(0)

    # ----------------------------------------------------------------- estimates
    def _estimate(self, call: Call) -> tuple[int, Decimal | None]:
        body = call.request_body if isinstance(call.request_body, dict) else {}
        model = call.request_model or ""
        prompt = self._prompt_tokens(model, body)
        output = self.default_output_tokens
        for key in _OUTPUT_LIMIT_KEYS:
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                output = value
                break
        cost = None
        if self.max_cost is not None:
            cost = self._price(call, prompt, output)
        return prompt + output, cost

    @staticmethod
    def _prompt_tokens(model: str, body: dict[str, Any]) -> int:
        """The prompt's tokens: chat messages with their framing where the body has them."""
        messages = body.get("messages")
        if isinstance(messages, list):
            try:
                from .counting import count_tokens

                return count_tokens(model, messages, system=body.get("system"), tools=body.get("tools")).tokens
            except Exception:
                pass  # an unusual message shape: fall back to the text estimate
        from .accounting import request_text

        text = request_text(body)
        if not text:
            return 0
        try:
            from .counting import estimate_tokens

            return estimate_tokens(model, text)
        except Exception:
            return (len(text) + 3) // 4

    @staticmethod
    def _price(call: Call, prompt: int, output: int) -> Decimal | None:
        try:
            from .call import recorder
            from .pricing import price
            from .usage import Usage

            # an estimate, not a call: it must not count as an unpriced call
            priced = price(call.request_model or "", Usage(prompt, output), provider=call.provider,
                           options=recorder.options, record_unpriced=False)
        except Exception:
            return None
        return None if priced is None else priced.amount

    # ----------------------------------------------------------------- the lifecycle's hooks
    def reserve(self, call: Call) -> None:
        """Before a call is sent: refuse it (``mode="raise"``) or warn when it would pass the limit."""
        tokens, cost = self._estimate(call)
        with self._lock:
            problem: tuple[str, Any, Any, Any] | None = None
            if self.max_tokens is not None and \
                    self.used_tokens + self._reserved_tokens + tokens > self.max_tokens:
                problem = ("tokens", self.used_tokens + self._reserved_tokens, tokens, self.max_tokens)
            elif self.max_cost is not None and cost is not None and \
                    self.used_cost + self._reserved_cost + cost > self.max_cost:
                problem = ("cost", self.used_cost + self._reserved_cost, cost, self.max_cost)
            if problem is None or self.mode == "warn":
                self._reserved_tokens += tokens
                self._reserved_cost += cost or 0
                call.reservation = (tokens, cost or Decimal(0))
        if problem is None:
            return
        kind, used, would_add, limit = problem
        message = (f"session {call.session.id!r}: {kind} budget {limit} would be passed: "
                   f"{used} used or reserved, this call would add about {would_add}")
        if self.mode == "warn":
            logger.warning("tokenmetry: %s (mode='warn': the call proceeds)", message)
            return
        raise BudgetExceeded(message, used=used, would_add=would_add, limit=limit, kind=kind)

    def settle(self, call: Call) -> None:
        """After a call: replace its reservation with what it really used."""
        reservation = call.reservation
        with self._lock:
            if reservation is not None:
                self._reserved_tokens -= reservation[0]
                self._reserved_cost -= reservation[1]
                call.reservation = None
            self.used_tokens += call.input_tokens + call.output_tokens
            if call.cost is not None:
                self.used_cost += call.cost.amount

    @property
    def remaining_tokens(self) -> int | None:
        with self._lock:
            return None if self.max_tokens is None else self.max_tokens - self.used_tokens

    def __repr__(self) -> str:
        return (f"Budget(max_tokens={self.max_tokens!r}, max_cost={self.max_cost!r}, mode={self.mode!r}, "
                f"used_tokens={self.used_tokens}, used_cost={self.used_cost})")

    def to_dict(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "max_cost": None if self.max_cost is None else str(self.max_cost),
                "mode": self.mode, "used_tokens": self.used_tokens, "used_cost": str(self.used_cost)}
