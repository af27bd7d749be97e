"""Stream observation: sync and async generators that sit between the SDK's chunk iterator and
the user, feed each chunk to the provider's chunk reader and finish the call exactly once.

The user keeps the SDK's own stream object (its class is swapped for a subclass that only adds
accounting to ``close()`` and finalisation), so ``isinstance``, ``with``, ``close()`` and the SDK's
helpers keep working. A chunk reader returns False for a chunk the user must not see (the usage-only
chunk tokenmetry asked for on their behalf).
"""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from .call import Call, Recorder

__all__ = ["observe", "aobserve", "ChunkReader"]

ChunkReader = Callable[[Call, Any], bool]
_perf = time.perf_counter


def observe(inner: Iterator[Any], call: Call, read_chunk: ChunkReader, recorder: Recorder) -> Iterator[Any]:
    """Yield what ``inner`` yields (less withheld chunks), accounting the call once at its end."""
    try:
        for chunk in inner:
            if not call.chunks:
                call.time_to_first_chunk_s = _perf() - call.t0
            call.chunks += 1
            try:
                # read on after close(): the record is settled and must not change, but a chunk
                # tokenmetry asked for is still withheld
                deliver = read_chunk(_scratch(call) if call.done else call, chunk)
            except Exception:
                deliver = True
                _reader_failed()
            if deliver:
                yield chunk
    except GeneratorExit:
        # closed before its end: by close() (already accounted) or dropped unfinished
        recorder.finish(call, incomplete=True)
        raise
    except BaseException as error:
        recorder.fail(call, error)
        raise
    recorder.finish(call)


async def aobserve(inner: AsyncIterator[Any], call: Call, read_chunk: ChunkReader,
                   recorder: Recorder) -> AsyncIterator[Any]:
    """The async twin of :func:`observe`."""
    try:
        async for chunk in inner:
            if not call.chunks:
                call.time_to_first_chunk_s = _perf() - call.t0
            call.chunks += 1
            try:
                # read on after close(): the record is settled and must not change, but a chunk
                # tokenmetry asked for is still withheld
                deliver = read_chunk(_scratch(call) if call.done else call, chunk)
            except Exception:
                deliver = True
                _reader_failed()
            if deliver:
                yield chunk
    except GeneratorExit:
        recorder.finish(call, incomplete=True)
        raise
    except BaseException as error:
        recorder.fail(call, error)
        raise
    recorder.finish(call)


def _scratch(call: Call) -> Call:
    """A throwaway copy of a settled call for the chunk reader to write into."""
    scratch = copy.copy(call)
    scratch.finish_reasons = ()
    scratch.text_parts = None
    return scratch


def _reader_failed() -> None:
    from .call import report_failure

    report_failure("chunk", "reading a stream chunk")
