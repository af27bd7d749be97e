"""Why did that call take so long? The SDK's own retries after HTTP 429, measured as slept.

    python examples/retries_and_throttling.py

The local endpoint answers the first two requests with 429 and a retry-after of 0.3 s; the openai
SDK retries inside the one call. tokenmetry records each backoff sleep as it happened (monotonic
clock) and files it as throttle wait on the call, the session and the process statistics.
"""

from __future__ import annotations

import openai

import tokenmetry
from tokenmetry.testing import LocalAPIServer, Reply


def main() -> None:
    tokenmetry.instrument()
    with LocalAPIServer() as server, \
            openai.OpenAI(api_key="offline", base_url=f"{server.url}/v1", max_retries=3) as client:
        server.enqueue("openai.chat", Reply(status=429, headers={"retry-after": "0.3"}),
                       Reply(status=429, headers={"retry-after": "0.3"}))
        with tokenmetry.session("batch-job") as job:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        record = job.calls[-1]
        print(f"one call: {record.duration_s:.2f} s, of which {record.throttle_wait_s:.2f} s asleep "
              f"on {record.retries} HTTP 429 answers")
        print(f"session throttle wait: {job.throttle_wait_s:.2f} s")
        stats = tokenmetry.stats()
        print(f"process: {stats.retries} retries, {stats.throttle_events} throttle events, "
              f"{stats.throttle_wait_s:.2f} s throttled")


if __name__ == "__main__":
    main()
