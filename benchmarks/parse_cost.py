"""CPU cost of reading one streamed chunk: the openai SDK's typed chunk object versus
streamchat's ChunkParser on the raw SSE line.

Both read the same recorded chunk line many times, side by side in one run; the figure that
matters is the ratio. Run: python benchmarks/parse_cost.py [--chunks 20000]
"""

from __future__ import annotations

import argparse
import json
import time

from openai._models import construct_type
from openai.types.chat import ChatCompletionChunk

from streamchat.core.parser import ChunkParser

LINE = "data: " + json.dumps(
    {
        "id": "chatcmpl-AbCdEf0123456789",
        "object": "chat.completion.chunk",
        "created": 1732406400,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_0ba0d124f1",
        "choices": [
            {
                "index": 0,
                "delta": {"content": " streaming"},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    }
)


def sdk_typed(count: int) -> float:
    """What the SDK's Stream does per chunk after its SSE decoder: json.loads, then build the
    typed model with construct_type (the SDK's default, non-strict path)."""
    payload = LINE[6:]
    started = time.process_time()
    for _ in range(count):
        chunk = construct_type(type_=ChatCompletionChunk, value=json.loads(payload))
        _ = chunk.choices[0].delta.content
    return (time.process_time() - started) / count


def ours(count: int) -> float:
    parser = ChunkParser()
    started = time.process_time()
    for _ in range(count):
        delta = parser.feed_line(LINE)
        assert delta is not None
        _ = delta.text
    return (time.process_time() - started) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunks", type=int, default=20_000)
    args = parser.parse_args()
    # Interleave the two a few times so drift on a noisy machine hits both alike.
    sdk_runs, our_runs = [], []
    for _ in range(3):
        sdk_runs.append(sdk_typed(args.chunks))
        our_runs.append(ours(args.chunks))
    sdk, mine = min(sdk_runs), min(our_runs)
    print("| reader | CPU per chunk | relative |")
    print("|---|---|---|")
    print(f"| openai SDK typed chunk (json.loads + construct_type) | {sdk * 1e6:.1f} µs | 1.00 |")
    ratio = mine / sdk
    print(f"| streamchat ChunkParser (raw SSE line) | {mine * 1e6:.1f} µs | {ratio:.2f} |")


if __name__ == "__main__":
    main()
