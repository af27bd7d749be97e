"""Instrument one client only, whatever the vendor: tokenmetry.wrap(client).

    python examples/wrap_one_client.py

Other clients in the process stay untouched. Runs offline against the local endpoint, which speaks
the OpenAI, Anthropic and Gemini wire formats.
"""

from __future__ import annotations

import anthropic
import openai
from google import genai
from google.genai import types

import tokenmetry
from tokenmetry.testing import LocalAPIServer


def main() -> None:
    with LocalAPIServer() as server:
        claude = tokenmetry.wrap(anthropic.Anthropic(api_key="offline", base_url=server.url))
        gemini = tokenmetry.wrap(genai.Client(api_key="offline",
                                              http_options=types.HttpOptions(base_url=server.url)))
        untouched = openai.OpenAI(api_key="offline", base_url=f"{server.url}/v1")  # not wrapped

        with tokenmetry.session("compare-vendors") as compare:
            claude.messages.create(model="claude-sonnet-4-5", max_tokens=200,
                                   messages=[{"role": "user", "content": "One sentence on tides."}])
            gemini.models.generate_content(model="gemini-2.5-flash", contents="One sentence on tides.")
            untouched.chat.completions.create(model="gpt-4o-mini",
                                              messages=[{"role": "user", "content": "One sentence on tides."}])
        for record in compare.calls:
            print(f"{record.provider:10} {record.response_model:22} input {record.usage.input_tokens:4} "
                  f"output {record.usage.output_tokens:4} cost {record.cost.amount if record.cost else None}")
        print(f"{len(compare.calls)} calls recorded (the unwrapped OpenAI client's call is not among them)")
        claude.close()
        untouched.close()


if __name__ == "__main__":
    main()
