"""A session's bounded call history, kept compactly.

A finished call is copied into the history when its session applies it: its figures packed into
one growing buffer, its names (provider, models, finish reasons: objects shared by many calls) in a
tuple, its response id copied. The call object itself, and the numbers and strings the SDK made for
it among its own short-lived objects, are then freed with the rest of the batch: a thousand calls'
worth of those kept alive in the allocator's pools between the SDK's objects cost every later SDK
call measurably (see docs/performance.md). ``CallRecord`` objects are built when the history is read.
"""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING, Any

from .usage import CallRecord, Usage

if TYPE_CHECKING:
    from .call import Call

__all__ = ["CallHistory", "shared"]

# the numbers of a call: input, output, cache read, cache write, reasoning, tool, 1-hour cache write,
# retries, turn (None as -1); started_at, duration_s, time to first chunk (None as NaN), throttle
# wait, retry wait
_ROW = struct.Struct("<9q5d")
_BLANK = bytes(_ROW.size)
_NO_COUNT = -1
_NO_TIME = math.nan

_SHARED_REASONS_MAX = 256
_shared_reasons: dict[tuple[str, ...], tuple[str, ...]] = {}


def shared(kept: dict[Any, Any], value: Any, limit: int) -> Any:
    """One shared object per distinct ``value`` (``kept``: their cache, emptied once it holds
    ``limit``): what the history keeps of many calls (a model's name, a set of finish reasons) is
    then one object, not each call's own copy made among the SDK's objects."""
    found = kept.get(value)
    if found is None:
        if len(kept) >= limit:
            kept.clear()
        found = kept[value] = value
    return found


def _count(value: int | None) -> int | None:
    return None if value == _NO_COUNT else value


class CallHistory:
    """The most recent ``limit`` calls of a session, oldest first. Not locked: the owner serialises."""

    __slots__ = ("_names", "_numbers", "_oldest", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._numbers = bytearray()  # one _ROW per call kept
        self._names: list[tuple[Any, ...]] = []
        self._oldest = 0  # once full: the slot the next call replaces

    def __len__(self) -> int:
        return len(self._names)

    def clear(self) -> None:
        self._numbers = bytearray()
        self._names = []
        self._oldest = 0

    def resize(self, limit: int) -> None:
        """Keep the newest ``limit`` calls from now on (the newest already kept stay)."""
        kept = self._rows()[-limit:] if limit else []
        self.limit = limit
        self.clear()
        for names, numbers in kept:
            self._append(names, numbers)

    def add(self, calls: list[Call]) -> None:
        limit = self.limit
        if not limit:
            return
        if len(calls) > limit:
            calls = calls[-limit:]
        names = self._names
        numbers = self._numbers
        pack = _ROW.pack_into
        size = _ROW.size
        for call in calls:
            response_id = call.response_id
            row = (call.provider, call.operation, call.request_model, call.response_model,
                   response_id.encode() if type(response_id) is str else response_id,  # a copy (see above)
                   call.usage_source, call.stream, call.error_type,
                   shared(_shared_reasons, call.finish_reasons, _SHARED_REASONS_MAX),
                   call.server_address, call.quote)
            if len(names) < limit:
                slot = len(names)
                names.append(row)
                numbers += _BLANK
            else:
                slot = self._oldest
                names[slot] = row
                self._oldest = (slot + 1) % limit
            read, written, thought, tool = (call.cache_read_tokens, call.cache_write_tokens,
                                            call.reasoning_tokens, call.tool_tokens)
            written_1h, turn, first_chunk = call.cache_write_1h_tokens, call.turn, call.time_to_first_chunk_s
            pack(numbers, slot * size, call.input_tokens, call.output_tokens,
                 _NO_COUNT if read is None else read, _NO_COUNT if written is None else written,
                 _NO_COUNT if thought is None else thought, _NO_COUNT if tool is None else tool,
                 _NO_COUNT if written_1h is None else written_1h, call.retries, _NO_COUNT if turn is None else turn,
                 call.started_at, call.duration_s, _NO_TIME if first_chunk is None else first_chunk,
                 call.throttle_wait_s, call.retry_wait_s)

    def _append(self, names: tuple[Any, ...], numbers: tuple[Any, ...]) -> None:
        self._names.append(names)
        self._numbers += _ROW.pack(*numbers)

    def _rows(self) -> list[tuple[tuple[Any, ...], tuple[Any, ...]]]:
        """(names, numbers) of every call kept, oldest first."""
        names, numbers, size = self._names, self._numbers, _ROW.size
        order = list(range(self._oldest, len(names))) + list(range(self._oldest))
        return [(names[slot], _ROW.unpack_from(numbers, slot * size)) for slot in order]

    def records(self, session_id: str) -> list[CallRecord]:
        """The calls kept, oldest first, as records."""
        records = []
        for names, numbers in self._rows():
            (provider, operation, request_model, response_model, response_id, usage_source, stream,
             error_type, finish_reasons, server_address, quote) = names
            (input_tokens, output_tokens, read, written, thought, tool, written_1h, retries, turn,
             started_at, duration_s, first_chunk, throttle_wait_s, retry_wait_s) = numbers
            usage = Usage(input_tokens, output_tokens, _count(read), _count(written), _count(thought), _count(tool))
            cost = None if quote is None else quote.cost_of_usage(usage, _count(written_1h))
            records.append(CallRecord(
                provider, operation, request_model, response_model,
                response_id.decode() if type(response_id) is bytes else response_id, usage, usage_source, cost, stream,
                started_at, duration_s, None if math.isnan(first_chunk) else first_chunk, retries,
                throttle_wait_s, error_type, session_id, finish_reasons, server_address, _count(turn),
                retry_wait_s))
        return records
