"""Guard cost per character as streams grow, beside the naive re-scan approach.

For streams of 1k, 10k and 100k characters fed as ~4-character tokens through the default
policies (pii, secrets, blocklist), measures CPU time per character of:

- streamchat's incremental Guard (scans new text plus a max_match-1 overlap), and
- the naive approach: after every 25 tokens, run the same policies over the whole text so far.

Flat per-character cost means linear total cost. Also reports hold mode's added delay on this
text (the most characters held back, and what that is in milliseconds at 30 and 100 tokens/s),
and the cost of one `feed()` for pieces of 1, 5 and 16 characters of this prose and of
benchmarks/load.py's answer ("w0 w1 w2 ..."), fed as fast as possible and at 50 tokens/s
(load.py's pace: the guard's clock advances 20 ms a piece, so the batching that follows UI
updates applies as it would in the app), and of realistic answers: the developer answers and
Hinglish/Urdu prose of tests/guardrail_corpus.py (code that names secrets, amounts, ids).

`--against PACKAGE` also measures another copy of the guardrails package in the same process,
side by side (e.g. an earlier commit's streamchat/guardrails copied to a directory on
PYTHONPATH as `oldguard`, with its imports of streamchat.guardrails renamed to match).
Run: python benchmarks/guard_scaling.py [--against PACKAGE]
"""

from __future__ import annotations

import argparse
import importlib
import random
import sys
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import streamchat.guardrails as current
from streamchat.guardrails import GuardrailConfig, build_guard, build_policies
from tests.guardrail_corpus import NEGATIVES

WORDS = (
    "streaming tokens arrive one after another while the model writes its answer and the "
    "guard checks each new piece with a small overlap so nothing split across chunks slips "
    "through version 1.2.3 on 2024-01-15 costs 12 dollars for 300 tokens"
).split()


def prose(length: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    out, size = [], 0
    while size < length:
        word = rng.choice(WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:length]


def tokens(text: str) -> list[str]:
    return [text[i : i + 4] for i in range(0, len(text), 4)]


def incremental(text: str) -> tuple[float, int]:
    guard = build_guard(GuardrailConfig())
    started = time.process_time()
    for piece in tokens(text):
        guard.feed(piece)
    guard.finish()
    return time.process_time() - started, guard.record.max_held_chars


def naive(text: str, every: int = 25) -> float:
    policies = build_policies(GuardrailConfig())
    pieces = tokens(text)
    started = time.process_time()
    for count in range(every, len(pieces) + every, every):
        whole = "".join(pieces[:count])
        for policy in policies:
            policy.find(whole)
    return time.process_time() - started


def per_feed(text: str, size: int, *, tps: float | None, package: ModuleType = current) -> float:
    """CPU microseconds per feed() of `size`-character pieces (and the final finish()). With
    `tps`, the guard's clock advances 1/tps between pieces, as if they arrived at that pace."""
    now = [0.0]
    clock = time.monotonic if tps is None else (lambda: now[0])
    guard = package.Guard(package.build_policies(package.GuardrailConfig()), clock=clock)
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    step = 0.0 if tps is None else 1 / tps
    started = time.process_time()
    for piece in pieces:
        now[0] += step
        guard.feed(piece)
    guard.finish()
    return (time.process_time() - started) / len(pieces) * 1e6


def held_behind(text: str, package: ModuleType = current) -> float:
    """Characters not yet released, on average after each 4-character piece, checked at every
    piece (what the hold itself keeps back, batching aside)."""
    guard = package.Guard(
        package.build_policies(package.GuardrailConfig()), check_every_chars=1, check_every_s=0.0
    )
    arrived = released = total = 0
    for piece in tokens(text):
        arrived += len(piece)
        released += len(guard.feed(piece).release)
        total += arrived - released
    return total / len(tokens(text))


def compare(other: ModuleType, texts: dict[str, str]) -> None:
    print()
    print(f"Side by side with {other.__name__} (µs per feed, the lowest of 3 runs):")
    print()
    print(
        "| text | piece | other, at once | this, at once | other, 50 tokens/s | this, 50 tokens/s |"
    )
    print("|---|---|---|---|---|---|")
    for name, text in texts.items():
        for size in (1, 4, 16):
            figures = [
                min(per_feed(text, size, tps=tps, package=package) for _ in range(3))
                for tps in (None, 50)
                for package in (other, current)
            ]
            print(f"| {name} | {size} chars | " + " | ".join(f"{f:.1f}" for f in figures) + " |")
    print()
    print("| text | other: characters held behind | this |")
    print("|---|---|---|")
    for name, text in texts.items():
        print(f"| {name} | {held_behind(text, other):.1f} | {held_behind(text):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--against", help="another copy of the guardrails package, by name")
    args = parser.parse_args()
    build_guard(GuardrailConfig()).feed("warm up the compiled patterns")
    print("| stream | incremental guard µs/char | naive re-scan µs/char | naive / guard |")
    print("|---|---|---|---|")
    held = 0
    for length in (1_000, 10_000, 100_000):
        text = prose(length)
        guard_s, held = incremental(text)
        if length > 10_000:
            # The naive approach is quadratic: 100k characters would take minutes. Measure it
            # on 30k and scale by (100/30)^2, which is what quadratic cost means.
            naive_s = naive(text[:30_000]) * (length / 30_000) ** 2
            label = " (extrapolated from 30k)"
        else:
            naive_s = naive(text)
            label = ""
        print(
            f"| {length:,} chars | {guard_s / length * 1e6:.2f} | "
            f"{naive_s / length * 1e6:.2f}{label} | {naive_s / guard_s:.1f}× |"
        )
    print()
    print(
        f"Hold mode held back at most {held} characters of this text (the word being written; "
        "up to max_match = 100 while a number, key or assignment is being written)."
    )
    for tps in (30, 100):
        # ~4 characters a token
        print(f"- at {tps} tokens/s that is about {held / 4 / tps * 1000:.0f} ms of delay")
    print()
    texts = {
        "prose": prose(20_000),
        "load.py's answer": "".join(f"w{i} " for i in range(200)) * 20,
        "developer answers, Hinglish": "\n\n".join(NEGATIVES) * 4,
    }
    print("| text | piece | µs per feed, as fast as possible | µs per feed at 50 tokens/s |")
    print("|---|---|---|---|")
    for name, text in texts.items():
        for size in (1, 5, 16):
            fast, paced = per_feed(text, size, tps=None), per_feed(text, size, tps=50)
            print(f"| {name} | {size} chars | {fast:.1f} | {paced:.1f} |")
    if args.against:
        compare(importlib.import_module(args.against), texts)


if __name__ == "__main__":
    main()
