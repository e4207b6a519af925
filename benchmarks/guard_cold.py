"""The guard's cost per check with the CPU's caches evicted, as in a busy server.

In the app a check of one answer comes after the other answers' updates (at N=25, 24 of
them), which evict the check's code and data from the CPU's caches: `Guard.feed` then costs
several times what it costs in a loop that does nothing else (guard_scaling.py). This feeds
load.py's answer ("w0 w1 ...", two tokens a piece, the guard's clock advancing 40 ms a piece,
one check per piece as in the app) to 25 guards in turn, and between two feeds parses JSON of
`--evict` small objects (3,000 evicts most of the caches; 0 evicts nothing). It reports the
thread CPU microseconds per feed of:

- the default guard;
- a guard whose three policies find nothing and hold nothing (the guard's own bookkeeping and
  the normaliser);
- the normaliser alone;
- with `--against PACKAGE`, the default guard of another copy of the guardrails package (see
  guard_scaling.py), side by side.

Run: python benchmarks/guard_cold.py [--evict 0,1000,3000] [--against PACKAGE]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import streamchat.guardrails as current
from streamchat.guardrails.normalize import Normalizer

PIECES = [f"w{i} w{i + 1} " for i in range(0, 200, 2)]
STREAMS = 25


class Quiet:
    """A policy that finds nothing and holds nothing."""

    accepts_since = True

    def __init__(self, name: str, max_match: int) -> None:
        self.name, self.max_match = name, max_match

    def find(self, text: str, since: int = 0) -> list[object]:
        return []

    def hold_from(self, text: str, since: int = 0) -> int:
        return len(text)


class NormaliserOnly:
    def __init__(self) -> None:
        self.normaliser = Normalizer()

    def feed(self, text: str) -> None:
        self.normaliser.feed(text)


def per_feed(make: Callable[[], object], evict: int, rounds: int = 3) -> float:
    """Thread CPU µs per feed, the lowest of `rounds`."""
    junk = json.dumps([{f"k{i}": [i, str(i), {"x": i * 1.5}]} for i in range(evict)])
    best = float("inf")
    for _ in range(rounds):
        now = [0.0]
        guards = [make() for _ in range(STREAMS)]
        for guard in guards:
            if hasattr(guard, "_clock"):
                guard._clock = lambda now=now: now[0]  # type: ignore[attr-defined]
        spent = 0
        for piece in PIECES:
            now[0] += 0.04
            for guard in guards:
                if evict:
                    json.loads(junk)
                started = time.thread_time_ns()
                guard.feed(piece)  # type: ignore[attr-defined]
                spent += time.thread_time_ns() - started
        best = min(best, spent / 1e3 / (STREAMS * len(PIECES)))
    return best


def default_guard(package: ModuleType) -> Callable[[], object]:
    return lambda: package.build_guard(package.GuardrailConfig())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--evict", default="0,1000,3000", help="objects parsed between feeds")
    parser.add_argument("--against", help="another copy of the guardrails package, by name")
    args = parser.parse_args()
    other = importlib.import_module(args.against) if args.against else None
    policies = current.build_policies(current.GuardrailConfig())
    quiet = [Quiet(p.name, p.max_match) for p in policies]
    columns: dict[str, Callable[[], object]] = {}
    if other is not None:
        columns[f"default guard, {other.__name__}"] = default_guard(other)
    columns["default guard"] = default_guard(current)
    columns["policies that do nothing"] = lambda: current.Guard(quiet)
    columns["normaliser alone"] = NormaliserOnly
    print("µs of CPU per feed (load.py's answer, 25 guards in turn, the lowest of 3 runs)")
    print()
    print("| objects parsed between feeds | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for evict in (int(n) for n in args.evict.split(",")):
        figures = [per_feed(make, evict) for make in columns.values()]
        print(f"| {evict:,} | " + " | ".join(f"{f:.1f}" for f in figures) + " |")


if __name__ == "__main__":
    main()
