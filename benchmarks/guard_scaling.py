"""Guard cost per character as streams grow, beside the naive re-scan approach.

For streams of 1k, 10k and 100k characters fed as ~4-character tokens through the default
policies (pii, secrets, blocklist), measures CPU time per character of:

- streamchat's incremental Guard (scans new text plus a max_match-1 overlap), and
- the naive approach: after every 25 tokens, run the same policies over the whole text so far.

Flat per-character cost means linear total cost. Also reports hold mode's added delay on this
text (the most characters held back, and what that is in milliseconds at 30 and 100 tokens/s).
Run: python benchmarks/guard_scaling.py
"""

from __future__ import annotations

import random
import time

from streamchat.guardrails import GuardrailConfig, build_guard, build_policies

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


def main() -> None:
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


if __name__ == "__main__":
    main()
