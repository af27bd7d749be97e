"""``tokenmetry count``: count the tokens of a text or of chat messages, offline."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

__all__ = ["count"]


def _read(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).expanduser().read_text(encoding="utf-8")
    except OSError as error:
        raise click.BadParameter(f"cannot read {source}: {error.strerror}") from None


@click.command()
@click.argument("text", nargs=-1)
@click.option("--model", "-m", required=True, help="Model id, e.g. gpt-4o, claude-sonnet-4-5, gemini-2.5-flash.")
@click.option("--file", "-f", "file", default=None, metavar="PATH",
              help="Count the text of this file ('-' for standard input).")
@click.option("--messages", default=None, metavar="PATH",
              help="A JSON file of chat messages [{\"role\": ..., \"content\": ...}] ('-' for standard input).")
@click.option("--system", default=None, help="A system prompt given apart from the messages.")
@click.option("--json", "as_json", is_flag=True, help="Print the count as JSON.")
def count(text: tuple[str, ...], model: str, file: str | None, messages: str | None, system: str | None,
          as_json: bool) -> None:
    """Count the input tokens of TEXT (or a file, or chat messages) for MODEL, offline.

    OpenAI models are counted exactly with their tokenizer; Claude and Gemini are estimated.
    With no TEXT, no --file and no --messages, the text is read from standard input.
    """
    from ..counting import count_tokens
    from ..errors import TokenmetryError

    chat: Any = None
    body: str | None = None
    if messages is not None:
        try:
            chat = json.loads(_read(messages))
        except ValueError as error:
            raise click.BadParameter(f"--messages is not JSON: {error}") from None
        if isinstance(chat, dict) and "messages" in chat:  # a whole request body works too
            system = system if system is not None else chat.get("system")
            chat = chat["messages"]
    if text:
        body = " ".join(text)
    elif file is not None:
        body = _read(file)
    elif chat is None:
        if sys.stdin.isatty():
            raise click.UsageError("give a TEXT, --file PATH, --messages PATH, or pipe the text in")
        body = sys.stdin.read()
    try:
        result = count_tokens(model, chat, text=body, system=system)
    except TokenmetryError as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(json.dumps({"model": model, **result.to_dict()}))
    else:
        kind = "exact" if result.exact else "estimate"
        click.echo(f"{result.tokens} tokens ({kind}, {result.method})")
