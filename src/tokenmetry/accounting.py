"""Estimates and prices for a finished call: the bridge from the lifecycle to counting and pricing.

Both are imported lazily: the tokenizers and the price data cost hundreds of milliseconds to load,
which a process that never needs them must not pay.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .call import logger, report_failure

if TYPE_CHECKING:
    from .call import Call
    from .config import Options
    from .pricing import Quote

__all__ = ["estimate_call", "quote_call", "request_text", "top_up_output", "warm_up"]


def request_text(body: Any) -> str:
    """The prompt-side text of a request body, for an estimate (roles and structure ignored)."""
    if not isinstance(body, Mapping):
        return ""
    pieces: list[str] = []
    for key in ("system", "instructions", "messages", "input", "prompt", "contents"):
        value = body.get(key)
        if value is not None:
            _collect_text(value, pieces)
    return "\n".join(pieces)


def _collect_text(value: Any, pieces: list[str]) -> None:
    if isinstance(value, str):
        pieces.append(value)
    elif isinstance(value, Mapping):
        for key in ("content", "text", "parts"):
            inner = value.get(key)
            if inner is not None:
                _collect_text(inner, pieces)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_text(item, pieces)


def estimate_call(call: Call) -> None:
    """Fill a call's usage from its text when the response carried none (``usage_source="estimated"``).

    A call that failed before any response arrived stays ``"missing"`` (nothing was generated and
    vendors do not bill it); so does one with no text on either side. A stream left early, or a
    stream or raw response dropped unread (``_OTHER``: the vendor had accepted the request and read
    the prompt), is estimated from its prompt and the text it had delivered.
    """
    if call.error_type is not None and call.error_type != "_OTHER" and not call.chunks:
        return
    prompt = request_text(call.request_body)
    output = "".join(call.text_parts) if call.text_parts else ""
    if not prompt and not output:
        return
    try:
        from .counting import estimate_tokens

        model = call.request_model or call.response_model or ""
        input_tokens = estimate_tokens(model, prompt) if prompt else 0
        output_tokens = estimate_tokens(model, output) if output else 0
    except Exception:
        logger.debug("tokenmetry: token estimate failed", exc_info=True)
        input_tokens = (len(prompt) + 3) // 4
        output_tokens = (len(output) + 3) // 4
    call.input_tokens = input_tokens
    call.output_tokens = output_tokens
    call.usage_source = "estimated"


def top_up_output(call: Call) -> None:
    """A stream left early whose provider usage has the prompt but not yet the output (Anthropic's
    ``message_start`` says output 1): raise the output to what the delivered text accounts for."""
    output = "".join(call.text_parts) if call.text_parts else ""
    if not output:
        return
    try:
        from .counting import estimate_tokens

        estimated = estimate_tokens(call.request_model or call.response_model or "", output)
    except Exception:
        estimated = (len(output) + 3) // 4
    if estimated > call.output_tokens:
        call.output_tokens = estimated
        call.usage_source = "estimated"


_quote_call: Any = None


def quote_call(call: Call, options: Options | None = None) -> tuple[Quote | None, bool]:
    """The quote a call's usage is billed at (``options``: the recorder's), or None when its model
    has no known price, and whether that answer holds for every call of the same provider and models
    with no ``price_context`` (see :func:`tokenmetry.pricing.quote_and_constancy`)."""
    global _quote_call
    if _quote_call is None:  # bound once: an import statement per call costs microseconds
        try:
            from .pricing import quote_and_constancy
        except ImportError:
            return None, False
        _quote_call = quote_and_constancy
    try:
        return _quote_call(call, options)  # type: ignore[no-any-return]
    except Exception:
        report_failure("pricing", "pricing a call")
        return None, False


def warm_up() -> None:
    """Start loading the price data in the background (called once, when the first call begins)."""
    try:
        from .pricing import warm_up as warm_prices
    except ImportError:
        return
    warm_prices()
