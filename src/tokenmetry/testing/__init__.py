"""Test support: a local HTTP server that speaks the OpenAI, Anthropic and Gemini wire formats.

Used by tokenmetry's own test-suite to drive the real SDK clients over real HTTP, and by
``tokenmetry demo`` when no API key is set. See :mod:`tokenmetry.testing.server` for the default
answers (deterministic usage formulas), the endpoints served and how to script replies.
"""

from tokenmetry.testing.server import (
    DEFAULT_EMBEDDING_DIMENSIONS,
    PROMPT_OVERHEAD,
    LocalAPIServer,
    RecordedRequest,
    Reply,
    SentResponse,
    SSEEvent,
    default_reply_text,
    offline_google_credentials,
    sample_from_schema,
    word_count,
)

__all__ = [
    "DEFAULT_EMBEDDING_DIMENSIONS",
    "PROMPT_OVERHEAD",
    "LocalAPIServer",
    "RecordedRequest",
    "Reply",
    "SSEEvent",
    "SentResponse",
    "default_reply_text",
    "offline_google_credentials",
    "sample_from_schema",
    "word_count",
]
