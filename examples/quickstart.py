"""Instrument once, then read a conversation's usage, cost and rates in-process.

    python examples/quickstart.py

With OPENAI_API_KEY set it calls the real API (model gpt-4o-mini); otherwise it talks to a local
endpoint that speaks OpenAI's wire format, so it runs offline.
"""

from __future__ import annotations

import os

import openai

import tokenmetry
from tokenmetry.testing import LocalAPIServer


def main() -> None:
    tokenmetry.instrument()  # every installed SDK; no OpenTelemetry SDK needed for what follows

    server = None
    if os.environ.get("OPENAI_API_KEY"):
        client = openai.OpenAI()
    else:
        server = LocalAPIServer().start()
        client = openai.OpenAI(api_key="offline", base_url=f"{server.url}/v1")
        print(f"(no OPENAI_API_KEY: using the local OpenAI-compatible endpoint at {server.url})")

    try:
        with tokenmetry.session("chat-42") as chat:
            with chat.turn():
                reply = client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "Name three prime numbers."}])
                print("assistant:", reply.choices[0].message.content)
            with chat.turn():
                # a stream without stream_options: tokenmetry still gets its exact usage, and the loop
                # below sees exactly the chunks it would have seen without tokenmetry
                stream = client.chat.completions.create(
                    model="gpt-4o-mini", stream=True,
                    messages=[{"role": "user", "content": "And three more, please."}])
                print("assistant:", "".join(chunk.choices[0].delta.content or "" for chunk in stream))

        print()
        print("session usage:", chat.usage)
        print("session cost: ", chat.cost)
        summary = chat.summary()
        print(f"calls {summary['calls']}, turns {summary['turns']}, "
              f"tokens per minute {summary['tokens_per_minute']:.0f}")
        for record in chat.calls:
            print(f"  {record.operation} {record.response_model}: {record.usage.total_tokens} tokens "
                  f"in {record.duration_s * 1000:.1f} ms, stream={record.stream}, source={record.usage_source}")
        stats = tokenmetry.stats()
        print(f"process: {stats.requests} requests, {stats.tokens_per_minute:.0f} tokens/min, "
              f"throttle wait {stats.throttle_wait_s:.2f} s")
    finally:
        client.close()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
