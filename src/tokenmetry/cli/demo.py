"""``tokenmetry demo``: a terminal chat that shows what every turn used and cost.

With the vendor's API key in the environment it talks to the real API. Without one it starts, in this
process, a local endpoint that speaks the vendor's wire protocol (:class:`tokenmetry.testing.LocalAPIServer`)
and answers with generated text, so the demo runs offline on a fresh machine. Input may come from a
pipe (one message or command per line), which is how the tests drive it.

A turn may make several model calls: when an answer stops at ``--max-tokens`` the demo asks the model
to continue (at most ``--max-continuations`` times). The turn's usage is the sum of all its calls, read
from the session's records of that turn (``Session.turn()``).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import click

from ..usage import CallRecord, Cost, Usage
from ._format import USAGE_COLUMNS, average, count, make_console, money, usage_fields

__all__ = ["CONTINUE_PROMPT", "DEFAULT_MODELS", "KEY_VARIABLES", "SYSTEM_PROMPT", "demo"]

SYSTEM_PROMPT = "You are a concise assistant in a terminal demo of tokenmetry. Answer in a few sentences."
CONTINUE_PROMPT = "Please continue exactly where you stopped."
DEFAULT_MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}
KEY_VARIABLES = {"openai": ("OPENAI_API_KEY",), "anthropic": ("ANTHROPIC_API_KEY",),
                 "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
_ADAPTERS = {"openai": "openai", "anthropic": "anthropic", "gemini": "google_genai"}
_SDKS = {"openai": ("openai", "openai"), "anthropic": ("anthropic", "anthropic"),
         "gemini": ("google.genai", "google-genai")}
_WIRE = {"openai": "OpenAI", "anthropic": "Anthropic", "gemini": "Gemini"}


# ----------------------------------------------------------------------------- vendor chat calls
Message = dict[str, str]  # {"role": "user" | "assistant", "content": text}


class _Chat:
    """One vendor's chat call: send the conversation, stream text to ``on_text``, say if it was cut."""

    def __init__(self, client: Any, model: str) -> None:
        self.client = client
        self.model = model

    def send(self, system: str, messages: list[Message], *, stream: bool, max_tokens: int,
             on_text: Callable[[str], None]) -> tuple[str, bool]:
        raise NotImplementedError


class _OpenAIChat(_Chat):
    def send(self, system: str, messages: list[Message], *, stream: bool, max_tokens: int,
             on_text: Callable[[str], None]) -> tuple[str, bool]:
        body = [{"role": "system", "content": system}, *messages]
        create = self.client.chat.completions.create
        if not stream:
            completion = create(model=self.model, messages=body, max_completion_tokens=max_tokens)
            choice = completion.choices[0]
            text = choice.message.content or ""
            on_text(text)
            return text, choice.finish_reason == "length"
        parts: list[str] = []
        cut = False
        for chunk in create(model=self.model, messages=body, max_completion_tokens=max_tokens, stream=True):
            for choice in chunk.choices:
                if choice.delta is not None and choice.delta.content:
                    parts.append(choice.delta.content)
                    on_text(choice.delta.content)
                if choice.finish_reason == "length":
                    cut = True
        return "".join(parts), cut


class _AnthropicChat(_Chat):
    def send(self, system: str, messages: list[Message], *, stream: bool, max_tokens: int,
             on_text: Callable[[str], None]) -> tuple[str, bool]:
        kwargs = {"model": self.model, "max_tokens": max_tokens, "system": system, "messages": messages}
        if not stream:
            message = self.client.messages.create(**kwargs)
            text = "".join(block.text for block in message.content if block.type == "text")
            on_text(text)
            return text, message.stop_reason == "max_tokens"
        parts: list[str] = []
        with self.client.messages.stream(**kwargs) as events:
            for text in events.text_stream:
                parts.append(text)
                on_text(text)
            final = events.get_final_message()
        return "".join(parts), final.stop_reason == "max_tokens"


class _GeminiChat(_Chat):
    def send(self, system: str, messages: list[Message], *, stream: bool, max_tokens: int,
             on_text: Callable[[str], None]) -> tuple[str, bool]:
        from google.genai import types

        contents = [types.Content(role="user" if m["role"] == "user" else "model", parts=[types.Part(text=m["content"])])
                    for m in messages]
        config = types.GenerateContentConfig(system_instruction=system, max_output_tokens=max_tokens)
        models = self.client.models
        responses = (models.generate_content_stream(model=self.model, contents=contents, config=config) if stream
                     else [models.generate_content(model=self.model, contents=contents, config=config)])
        parts: list[str] = []
        cut = False
        for response in responses:
            for candidate in response.candidates or []:
                content = candidate.content
                for part in (content.parts or []) if content is not None else []:
                    if part.text and not part.thought:
                        parts.append(part.text)
                        on_text(part.text)
                if candidate.finish_reason == types.FinishReason.MAX_TOKENS:
                    cut = True
        return "".join(parts), cut


# ----------------------------------------------------------------------------- the local endpoint
_SENTENCES = (
    "Every call is counted as it happens: input tokens, output tokens and the cached part of the prompt.",
    "A conversation grows with each turn, because the whole history is sent again as input.",
    "Streamed answers arrive piece by piece, and their usage is read from the final chunk.",
    "Reasoning models spend hidden output tokens before they answer, and those are billed too.",
    "Prompt caching makes a repeated prefix cheaper, so the cached tokens are shown apart.",
    "Rate limits are reported in response headers, and a throttled call waits before it retries.",
    "Tokens per minute is measured over a rolling window, so it falls back to zero when you stop.",
    "The cost of a call is its usage priced with the vendor's published rates for that model.",
    "A session groups the calls of one conversation, and a turn groups the calls of one message.",
    "OpenTelemetry spans and metrics carry the same numbers to the collector your team already runs.",
    "Short questions are cheap, but a long history makes every new question cost more.",
    "The ledger keeps one row per call, so a report can show usage by model, day or session later.",
)
_CONTINUATIONS = (
    "To finish the thought: each figure above comes from the vendor's own usage report.",
    "And that is the rest of it: the totals add every call of the turn, continuations included.",
)


def _last_user_text(body: Any) -> str:
    """The last user message of an OpenAI, Anthropic or Gemini request body."""
    if not isinstance(body, dict):
        return ""
    for item in reversed(body.get("messages") or body.get("contents") or []):
        if not isinstance(item, dict) or item.get("role", "user") != "user":
            continue
        content = item.get("content", item.get("parts"))
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def generated_reply(user_text: str) -> str:
    """The local endpoint's answer: a few sentences chosen from the question (deterministic)."""
    digest = hashlib.sha256(user_text.strip().lower().encode()).digest()
    if user_text.strip() == CONTINUE_PROMPT:
        return _CONTINUATIONS[digest[0] % len(_CONTINUATIONS)]
    words = user_text.split()
    opening = f'About "{" ".join(words[:6])}":' if words else "Hello!"
    count_ = 2 + digest[1] % 3
    start = digest[2] % len(_SENTENCES)
    chosen = [_SENTENCES[(start + 5 * i) % len(_SENTENCES)] for i in range(count_)]
    return " ".join([opening, *chosen])


class _LocalResponder:
    """Answers every request of the local endpoint with generated text (re-queues itself each time)."""

    def __init__(self, server: Any, event_delay_s: float) -> None:
        self.server = server
        self.event_delay_s = event_delay_s

    def __call__(self, request: Any) -> Any:
        from tokenmetry.testing import Reply

        self.server.enqueue("*", self)
        return Reply(text=generated_reply(_last_user_text(request.json)), event_delay=self.event_delay_s)


# ----------------------------------------------------------------------------- the demo
def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


@dataclass
class _Tally:
    calls: int = 0
    usage: Usage = field(default_factory=Usage)
    cost: Decimal | None = None
    currency: str = "USD"
    unpriced: int = 0

    def add(self, record: CallRecord) -> None:
        self.calls += 1
        self.usage = self.usage + record.usage
        if record.cost is not None:
            self.cost = record.cost.amount if self.cost is None else self.cost + record.cost.amount
            self.currency = record.cost.currency
        elif record.usage.total_tokens:
            self.unpriced += 1

    def cost_text(self) -> str:
        text = money(self.cost, self.currency)
        return f"{text} ({self.unpriced} unpriced)" if self.unpriced and self.cost is not None else text


@dataclass
class _DemoSession:
    session: Any
    messages: list[Message] = field(default_factory=list)
    turns: int = 0
    total: _Tally = field(default_factory=_Tally)
    by_model: dict[str, _Tally] = field(default_factory=dict)


class Demo:
    def __init__(self, console: Any, chat: _Chat, provider: str, *, stream: bool, max_tokens: int,
                 max_continuations: int, system: str) -> None:
        self.console = console
        self.chat = chat
        self.provider = provider
        self.stream = stream
        self.max_tokens = max_tokens
        self.max_continuations = max_continuations
        self.system = system
        self.sessions: list[_DemoSession] = []
        # the records of the turn in progress, as each call finishes (exact whatever history_limit is)
        self._turn_records: list[CallRecord] | None = None
        self.new_session()

    def _collect(self, record: CallRecord) -> None:
        records = self._turn_records
        if records is not None:
            records.append(record)

    @property
    def current(self) -> _DemoSession:
        return self.sessions[-1]

    def new_session(self) -> None:
        import tokenmetry

        demo_session = _DemoSession(tokenmetry.session(f"demo-{uuid.uuid4().hex[:8]}"))
        self.sessions.append(demo_session)

    def out(self, text: str) -> None:
        self.console.print(text, markup=False)

    # ------------------------------------------------------------------ one turn
    def turn(self, user_text: str) -> None:
        state = self.current
        before = len(state.messages)
        state.messages.append({"role": "user", "content": user_text})
        write = self.console.file.write
        write("assistant> ")
        self.console.file.flush()

        continuing = [False]  # the next text continues a cut answer: space it from what it continues

        def on_text(text: str) -> None:
            if continuing[0] and text:
                continuing[0] = False
                if not text[0].isspace():
                    text = " " + text
            write(text)
            self.console.file.flush()

        error: BaseException | None = None
        collected: list[Any] = []
        self._turn_records = collected
        with state.session, state.session.turn() as number:
            try:
                for attempt in range(self.max_continuations + 1):
                    continuing[0] = attempt > 0
                    text, cut = self.chat.send(self.system, state.messages, stream=self.stream,
                                               max_tokens=self.max_tokens, on_text=on_text)
                    state.messages.append({"role": "assistant", "content": text})
                    if not cut or not text or attempt == self.max_continuations:
                        if cut:
                            write(" [cut at --max-tokens]")
                        break
                    state.messages.append({"role": "user", "content": CONTINUE_PROMPT})
            except KeyboardInterrupt as interrupted:
                error = interrupted
            except Exception as failure:  # noqa: BLE001 - any SDK's API error ends the turn, not the demo
                error = failure
        write("\n")
        if error is not None:
            del state.messages[before:]  # the next turn starts from a consistent history
            name = "interrupted" if isinstance(error, KeyboardInterrupt) else type(error).__name__
            self.out(f"  ! {name}: {error}")
        self._turn_records = None
        records = [r for r in collected if r.turn == number and r.session_id == state.session.id]
        self._account(state, records)
        self._print_turn(number, records)
        self._print_status(state)

    def _account(self, state: _DemoSession, records: list[CallRecord]) -> None:
        state.turns += 1
        for record in records:
            state.total.add(record)
            model = record.response_model or record.request_model or "unknown"
            state.by_model.setdefault(model, _Tally()).add(record)

    def _print_turn(self, number: int, records: list[CallRecord]) -> None:
        tally = _Tally()
        for record in records:
            tally.add(record)
        usage = tally.usage
        calls = _plural(tally.calls, "call")
        figures = " · ".join(f"{title} {count(value)}" for title, value in usage_fields(usage))
        estimated = " (estimated)" if any(r.usage_source == "estimated" for r in records) else ""
        self.out(f"  turn {number} · {calls} · {figures}{estimated} · cost {tally.cost_text()}")

    def _print_status(self, state: _DemoSession) -> None:
        session = state.session
        cost: Cost | None = session.cost
        turns = _plural(state.turns, "turn")
        self.out(f"  session {session.id} · {turns} · {session.tokens_per_minute():.0f} tokens/min · "
                 f"throttle wait {session.throttle_wait_s:.2f} s · cost "
                 f"{'n/a' if cost is None else money(cost.amount, cost.currency)}")

    # ------------------------------------------------------------------ statistics
    def print_stats(self, state: _DemoSession | None = None, title: str = "Session statistics") -> None:
        from rich import box
        from rich.table import Table

        state = state or self.current
        session = state.session
        summary = session.summary()
        self.out(f"{title}: session {session.id} · {_plural(state.turns, 'turn')} · "
                 f"{_plural(state.total.calls, 'call')} · {_plural(summary['errors'], 'error')} · "
                 f"{_plural(summary['retries'], 'retry', 'retries')}")
        table = Table(box=box.SIMPLE_HEAD, show_edge=False)
        table.add_column("")
        table.add_column("calls", justify="right")
        for name, _ in USAGE_COLUMNS:
            table.add_column(name, justify="right")
        table.add_column("cost", justify="right")
        usage = state.total.usage
        table.add_row("total", str(state.total.calls), *(count(v) for _, v in usage_fields(usage)),
                      state.total.cost_text())
        per_turn_cost = "n/a" if state.total.cost is None or not state.turns else money(
            (state.total.cost / state.turns).quantize(Decimal("1e-10")), state.total.currency)
        table.add_row("per turn", average(state.total.calls, state.turns),
                      *(average(v, state.turns) for _, v in usage_fields(usage)), per_turn_cost)
        self.console.print(table)
        models = Table(box=box.SIMPLE_HEAD, show_edge=False, title=None)
        models.add_column("model")
        models.add_column("calls", justify="right")
        for name, _ in USAGE_COLUMNS:
            models.add_column(name, justify="right")
        models.add_column("cost", justify="right")
        for model, tally in sorted(state.by_model.items()):
            models.add_row(model, str(tally.calls), *(count(v) for _, v in usage_fields(tally.usage)),
                           tally.cost_text())
        if state.by_model:
            self.out("By model:")
            self.console.print(models)
        self.out(f"tokens/min {summary['tokens_per_minute']:.0f} · work rate {summary['work_rate_tpm']:.0f} "
                 f"tokens/min while busy · throttle wait {summary['throttle_wait_s']:.2f} s · "
                 f"other retry wait {summary['retry_wait_s']:.2f} s")

    def print_final(self) -> None:
        from rich import box
        from rich.table import Table

        self.print_stats(title="Final statistics")
        if len(self.sessions) < 2:
            return
        table = Table(box=box.SIMPLE_HEAD, show_edge=False)
        table.add_column("session")
        table.add_column("turns", justify="right")
        table.add_column("calls", justify="right")
        for name, _ in USAGE_COLUMNS:
            table.add_column(name, justify="right")
        table.add_column("cost", justify="right")
        overall = _Tally()
        turns = 0
        for state in self.sessions:
            table.add_row(state.session.id, str(state.turns), str(state.total.calls),
                          *(count(v) for _, v in usage_fields(state.total.usage)), state.total.cost_text())
            turns += state.turns
            overall.calls += state.total.calls
            overall.usage = overall.usage + state.total.usage
            overall.unpriced += state.total.unpriced
            if state.total.cost is not None:
                overall.cost = state.total.cost if overall.cost is None else overall.cost + state.total.cost
                overall.currency = state.total.currency
        table.add_row("all sessions", str(turns), str(overall.calls),
                      *(count(v) for _, v in usage_fields(overall.usage)), overall.cost_text())
        self.out(f"All {len(self.sessions)} sessions:")
        self.console.print(table)

    # ------------------------------------------------------------------ the loop
    def run(self, read_line: Callable[[], str | None]) -> None:
        import tokenmetry

        unsubscribe = tokenmetry.on_record(self._collect)
        try:
            self._loop(read_line)
        finally:
            unsubscribe()
        self.print_final()

    def _loop(self, read_line: Callable[[], str | None]) -> None:
        while True:
            line = read_line()
            if line is None:
                break
            text = line.strip()
            if not text:
                continue
            command = text.lower()
            if command in ("/exit", "/quit"):
                break
            if command == "/stats":
                self.print_stats()
            elif command == "/new":
                old = self.current.session.id
                self.new_session()
                self.out(f"Started session {self.current.session.id} (session {old} is kept for the final "
                         "statistics).")
            elif command == "/help":
                self.out("Type a message, or /stats, /new, /exit.")
            elif command.startswith("/"):
                self.out(f"Unknown command {text}: use /stats, /new or /exit.")
            else:
                self.turn(text)


def _adapter_problem(provider: str) -> str | None:
    """Why tokenmetry cannot count this provider's calls here (None when it can)."""
    import importlib

    from ..instrumentation import instrumented

    module, package = _SDKS[provider]
    try:
        importlib.import_module(module)
    except ImportError:
        return f"the {package} SDK is not installed: pip install {package}"
    if _ADAPTERS[provider] not in instrumented():
        return f"this tokenmetry has no adapter for {package} yet, so its calls cannot be counted"
    return None


def _make_client(provider: str, base_url: str | None, api_key: str | None, local: Any) -> Any:
    if local is not None:
        factory = {"openai": local.openai_client, "anthropic": local.anthropic_client,
                   "gemini": local.genai_client}[provider]
        return factory()
    if provider == "openai":
        import openai

        return openai.OpenAI(api_key=api_key, base_url=base_url)
    if provider == "anthropic":
        import anthropic

        return anthropic.Anthropic(api_key=api_key, base_url=base_url)
    from google import genai
    from google.genai import types

    options = types.HttpOptions(base_url=base_url) if base_url else None
    return genai.Client(api_key=api_key, http_options=options)


def _key_from_env(provider: str) -> tuple[str | None, str | None]:
    for variable in KEY_VARIABLES[provider]:
        value = os.environ.get(variable, "").strip()
        if value:
            return variable, value
    return None, None


@click.command()
@click.option("--provider", type=click.Choice(["openai", "anthropic", "gemini"]), default=None,
              help="Vendor to chat with (default: the first whose API key is set, else openai).")
@click.option("--model", default=None, help="Model id (default: gpt-4o-mini, claude-haiku-4-5 or gemini-2.5-flash).")
@click.option("--no-stream", is_flag=True, help="Wait for whole answers instead of streaming them.")
@click.option("--max-tokens", type=click.IntRange(1), default=1024, show_default=True,
              help="Output limit of each call.")
@click.option("--max-continuations", type=click.IntRange(0), default=2, show_default=True,
              help="When an answer stops at --max-tokens, ask the model to continue this many times.")
@click.option("--local", "force_local", is_flag=True, help="Use the local endpoint even when an API key is set.")
@click.option("--base-url", default=None,
              help="Send the calls to this endpoint instead (a proxy, an OpenAI-compatible server, a test server).")
@click.option("--system", default=SYSTEM_PROMPT, show_default=False, help="System prompt.")
@click.option("--chunk-delay", type=click.FloatRange(0), default=0.02, hidden=True,
              help="Seconds between streamed words of the local endpoint.")
def demo(provider: str | None, model: str | None, no_stream: bool, max_tokens: int, max_continuations: int,
         force_local: bool, base_url: str | None, system: str, chunk_delay: float) -> None:
    """Chat in the terminal and watch each turn's tokens, cost, tokens/min and throttle wait.

    Commands: /stats (session statistics), /new (start a new session), /exit (final statistics).
    Without an API key (OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY or GOOGLE_API_KEY) the demo
    talks to a local endpoint started in this process, so it also works offline.
    """
    import tokenmetry
    from tokenmetry.errors import ConfigError

    console = make_console()
    if provider is None:
        provider = next((p for p in ("openai", "anthropic", "gemini") if _key_from_env(p)[1]), "openai")
    model = model or DEFAULT_MODELS[provider]
    try:
        # only the vendor in use: importing every installed SDK would slow the start for nothing
        tokenmetry.instrument(providers=[_ADAPTERS[provider]])
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    problem = _adapter_problem(provider)
    if problem is not None:
        raise click.ClickException(f"cannot run the {provider} demo: {problem}")

    variable, api_key = _key_from_env(provider)
    local = None
    if base_url is None and (force_local or api_key is None):
        from tokenmetry.testing import LocalAPIServer

        # a proxy configured in the environment must not intercept the local endpoint
        for variable in ("NO_PROXY", "no_proxy"):
            os.environ[variable] = ",".join(filter(None, (os.environ.get(variable), "127.0.0.1", "localhost")))
        local = LocalAPIServer().start()
        local.enqueue("*", _LocalResponder(local, chunk_delay))
    stream = not no_stream
    console.print(f"tokenmetry demo · provider {provider} · model {model} · "
                  f"{'streaming' if stream else 'not streaming'} · max tokens {max_tokens}", markup=False)
    if local is not None:
        reason = "--local was given" if force_local else \
            f"No {' or '.join(KEY_VARIABLES[provider])} in the environment"
        console.print(
            f"{reason}: this demo talks to a LOCAL endpoint at {local.url} that speaks the {_WIRE[provider]} "
            "wire protocol and answers with generated text (usage: prompt words + 10 input tokens, one output "
            f"token per reply word). Set {KEY_VARIABLES[provider][0]} to use the real API.", markup=False)
    elif base_url is not None:
        console.print(f"Calls go to {base_url}" + ("" if api_key else " (no API key set: sending a placeholder)"),
                      markup=False)
        api_key = api_key or "not-needed"
    else:
        console.print(f"Using the real {_WIRE[provider]} API with {variable}: calls are billed.", markup=False)
    console.print("Type a message; /stats shows the session statistics, /new starts a new session, /exit quits.",
                  markup=False)

    client = _make_client(provider, base_url, api_key, local)
    chat = {"openai": _OpenAIChat, "anthropic": _AnthropicChat, "gemini": _GeminiChat}[provider](client, model)
    runner = Demo(console, chat, provider, stream=stream, max_tokens=max_tokens,
                  max_continuations=max_continuations, system=system)
    interactive = sys.stdin.isatty()

    def read_line() -> str | None:
        try:
            if interactive:
                return console.input("you> ")
            line = sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return None
        if not line:
            return None
        console.print(f"you> {line.rstrip()}", markup=False)  # a transcript that reads like the terminal
        return line

    started = time.monotonic()
    try:
        runner.run(read_line)
    finally:
        if local is not None:
            local.stop()
    console.print(f"Demo finished after {time.monotonic() - started:.1f} s.", markup=False)
