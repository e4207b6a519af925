"""Load: streamchat against the canonical per-token Chainlit app, side by side in one run.

Starts a fixed-rate OpenAI-compatible upstream (benchmarks/upstream.py, its own process) and
three apps (`chainlit run`, each its own process) against it: the baseline
(benchmarks/baseline_app.py, `stream_token` per SDK chunk), streamchat with GUARDRAILS=off (the
streaming path alone) and streamchat with its default guardrails. For N concurrent chat
sessions over real Socket.IO (the browser's protocol; each client offers websocket compression,
permessage-deflate, as browsers do, and each app takes it or not as it is configured) each
asks one question whose answer is `--tokens` tokens at `--tps` tokens/s. The apps take turns:
for each N, each app runs once, and that round is repeated `--repeat` times, so a slow spell of
the machine falls on all of them.
The benchmark reports per app and N:

- server CPU seconds per 1000 delivered tokens (the app process's run time, /proc: the
  scheduler's nanosecond count of its threads, clock ticks if a thread ended): the median of
  the rounds; the default guardrails' cost is also given as the median of each round's ratio
  to GUARDRAILS=off (the two run back to back in a round);
- delivery lag p50/p99: arrival time of a UI event minus the upstream's send time of the newest
  token it contains (over all rounds);
- time to first token p50/p99: question sent -> first UI event with text (over all rounds);
- Socket.IO stream events per answer;
- answers whose final text differs from the upstream's (must be 0);
- whether its websockets were compressed (a line under the table).

`--no-deflate-offer`: clients that do not offer compression, as in the runs recorded before
streamchat declined it (2026-12-02).

`--also "NAME:VAR=VALUE,..."` adds a streamchat app with GUARDRAILS=off and those settings to
the turns (repeatable), to measure one setting's effect side by side, e.g.
`--also "read pacing off:STREAM_READ_PACING=false"`.

Run: python benchmarks/load.py [--quick] [--sessions 1,10,25,50,100] [--tps 50] [--tokens 200]
     [--repeat 3] [--also NAME:VAR=VALUE,...] [--no-deflate-offer]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.harness import AppProcess, ChainlitClient, free_port, strip_footer  # noqa: E402
from tests.harness import start_upstream as start_upstream_process  # noqa: E402

TOKEN = re.compile(r"w(\d+) ")
TICKS = os.sysconf("SC_CLK_TCK")
_RUNS = 0


def tick_cpu_seconds(pid: int) -> float:
    """utime+stime of the whole process, threads that ended included, in 10 ms clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def thread_cpu_seconds(pid: int) -> float:
    """The scheduler's run time of the process's live threads, in nanoseconds (as seconds)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


@dataclass
class CpuClock:
    """CPU time of a process across an interval. Clock ticks are 10 ms steps, as much as a
    fifth of what one app spends in a round at N=1, so the scheduler's nanosecond count is
    used; if a thread ended meanwhile (its time leaves that count), the ticks are."""

    pid: int
    ticks: float = 0.0
    threads: float = 0.0

    def start(self) -> None:
        self.ticks, self.threads = tick_cpu_seconds(self.pid), thread_cpu_seconds(self.pid)

    def elapsed(self) -> float:
        by_ticks = tick_cpu_seconds(self.pid) - self.ticks
        by_threads = thread_cpu_seconds(self.pid) - self.threads
        return by_threads if by_threads > by_ticks - 2 / TICKS else by_ticks


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclass
class Figures:
    app: str
    sessions: int
    cpu_per_1k_tokens: float
    lag_p50_ms: float
    lag_p99_ms: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    events_per_answer: float
    mismatches: int
    compressed: float = 0.0  # the share of sessions whose websocket negotiated compression
    notes: list[str] = field(default_factory=list)
    lags_ms: list[float] = field(default_factory=list, repr=False)
    ttfts_ms: list[float] = field(default_factory=list, repr=False)
    rounds_cpu: list[float] = field(default_factory=list, repr=False)  # in the order run


def combine(rounds: list[Figures]) -> Figures:
    """One app's rounds at one N: the median CPU, percentiles over every round's samples."""
    lags = [lag for f in rounds for lag in f.lags_ms]
    ttfts = [ttft for f in rounds for ttft in f.ttfts_ms]
    return Figures(
        app=rounds[0].app,
        sessions=rounds[0].sessions,
        cpu_per_1k_tokens=statistics.median(f.cpu_per_1k_tokens for f in rounds),
        lag_p50_ms=percentile(lags, 50),
        lag_p99_ms=percentile(lags, 99),
        ttft_p50_ms=percentile(ttfts, 50),
        ttft_p99_ms=percentile(ttfts, 99),
        events_per_answer=statistics.mean(f.events_per_answer for f in rounds),
        mismatches=sum(f.mismatches for f in rounds),
        compressed=statistics.mean(f.compressed for f in rounds),
        notes=[f"cpu/1k per round: {', '.join(f'{f.cpu_per_1k_tokens:.3f}' for f in rounds)}"],
        rounds_cpu=[f.cpu_per_1k_tokens for f in rounds],
    )


def paired_ratio(ours: Figures, reference: Figures) -> tuple[float, list[float]]:
    """The median of per-round ratios: each round runs the apps back to back, so a slow spell
    of the machine falls on both figures of a pair (steadier than a ratio of medians)."""
    pairs = [a / b for a, b in zip(ours.rounds_cpu, reference.rounds_cpu, strict=True) if b > 0]
    return (statistics.median(pairs) if pairs else float("nan")), pairs


async def run_load(
    app: AppProcess, upstream_url: str, sessions: int, tokens: int, *, offer_deflate: bool = True
) -> Figures:
    clients = [ChainlitClient(app.url, offer_deflate=offer_deflate) for _ in range(sessions)]
    await asyncio.gather(*(client.connect() for client in clients))
    compressed = sum(client.compressed for client in clients) / sessions
    # Unique per run (the upstream keys its send times by question), and free of long digit
    # runs, which the input guardrails would rightly take for phone or card numbers.
    global _RUNS
    _RUNS += 1
    questions = [f"question r{_RUNS} s{i}" for i in range(sessions)]
    expected = "".join(f"w{i} " for i in range(tokens))
    cpu = CpuClock(app.pid)
    cpu.start()
    marks = await asyncio.gather(*(c.send(q) for c, q in zip(clients, questions, strict=True)))
    sent_at = time.monotonic(), time.time()
    answers = await asyncio.gather(
        *(c.finished(m, within=300) for c, m in zip(clients, marks, strict=True))
    )
    cpu_used = cpu.elapsed()
    lags, ttfts, events, mismatches = [], [], [], 0
    async with httpx2.AsyncClient(base_url=upstream_url, timeout=30) as http:
        for client, question, answer in zip(clients, questions, answers, strict=True):
            sent = (await http.get("/_sent", params={"q": question})).json()
            events.append(len(answer.stream_events))
            for event, text in answer.progress():
                found = TOKEN.findall(text)
                if not found:
                    continue
                if len(ttfts) < len(events):
                    ttfts.append((event.at - sent_at[0]) * 1000)
                newest = int(found[-1])
                # event.at is monotonic; convert to wall time to compare with the upstream's.
                arrival_wall = sent_at[1] + (event.at - sent_at[0])
                lags.append((arrival_wall - sent[newest]) * 1000)
            if strip_footer(answer.final_assistant_text()) != expected:
                mismatches += 1
            await client.close()
    return Figures(
        app="",
        sessions=sessions,
        cpu_per_1k_tokens=cpu_used / (sessions * tokens) * 1000,
        lag_p50_ms=percentile(lags, 50),
        lag_p99_ms=percentile(lags, 99),
        ttft_p50_ms=percentile(ttfts, 50),
        ttft_p99_ms=percentile(ttfts, 99),
        events_per_answer=statistics.mean(events) if events else 0.0,
        mismatches=mismatches,
        compressed=compressed,
        lags_ms=lags,
        ttfts_ms=ttfts,
    )


def start_upstream(tps: float, tokens: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    return start_upstream_process(
        [sys.executable, str(REPO / "benchmarks" / "upstream.py"), "--port", str(port),
         "--tps", str(tps), "--tokens", str(tokens)],
        port,
    )  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sessions", default="1,10,25,50,100")
    parser.add_argument("--tps", type=float, default=50)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3, help="rounds per N (median CPU)")
    parser.add_argument("--quick", action="store_true", help="N in 1, 10 only, one round")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME:VAR=VALUE,...",
        help="another streamchat app (GUARDRAILS=off) with these settings",
    )
    parser.add_argument(
        "--no-deflate-offer",
        dest="offer_deflate",
        action="store_false",
        help="clients do not offer websocket compression (browsers do)",
    )
    args = parser.parse_args()
    counts = [1, 10] if args.quick else [int(n) for n in args.sessions.split(",")]
    rounds = 1 if args.quick else max(1, args.repeat)
    upstream, url = start_upstream(args.tps, args.tokens)
    apps = {
        "baseline (stream_token per chunk)": (REPO / "benchmarks" / "baseline_app.py", {}),
        "streamchat, GUARDRAILS=off": (REPO / "app.py", {"GUARDRAILS": "off"}),
        "streamchat, default guardrails": (REPO / "app.py", {}),
    }
    for spec in args.also:
        name, _, settings = spec.partition(":")
        pairs = [pair.split("=", 1) for pair in settings.split(",") if pair]
        if not name or any(len(pair) != 2 for pair in pairs):
            parser.error(f"--also wants NAME:VAR=VALUE,... (got {spec!r})")
        apps[f"streamchat, {name}"] = (REPO / "app.py", {"GUARDRAILS": "off", **dict(pairs)})
    results: list[Figures] = []
    with contextlib.ExitStack() as running:
        try:
            started: dict[str, AppProcess] = {}
            for name, (path, extra) in apps.items():
                env = {
                    "OPENAI_BASE_URL": f"{url}/v1",
                    "OPENAI_MODEL": "bench",
                    "STREAM_RETRIES": "0",
                    "SHOW_METRICS": "false",
                    "LOG_LEVEL": "WARNING",
                    **extra,
                }
                started[name] = running.enter_context(AppProcess(env, app_path=path))
                # Warm up imports and first requests.
                await run_load(started[name], url, 1, 10, offer_deflate=args.offer_deflate)
            for sessions in counts:
                by_app: dict[str, list[Figures]] = {name: [] for name in started}
                for _ in range(rounds):
                    for name, app in started.items():
                        figures = await run_load(
                            app, url, sessions, args.tokens, offer_deflate=args.offer_deflate
                        )
                        figures.app = name
                        by_app[name].append(figures)
                for name in started:
                    combined = combine(by_app[name])
                    results.append(combined)
                    print(
                        f"{name:36} N={sessions:<4} cpu/1k={combined.cpu_per_1k_tokens:.3f}s "
                        f"lag p50/p99={combined.lag_p50_ms:.0f}/{combined.lag_p99_ms:.0f} ms "
                        f"ttft p50={combined.ttft_p50_ms:.0f} ms "
                        f"events={combined.events_per_answer:.0f} "
                        f"mismatches={combined.mismatches} ({combined.notes[0]})",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            upstream.terminate()
            upstream.wait(10)
    report(results, counts, args, rounds)


def report(
    results: list[Figures], counts: list[int], args: argparse.Namespace, rounds: int
) -> None:
    print(f"Upstream: {args.tokens} tokens per answer at {args.tps:g} tokens/s; "
          f"{os.cpu_count()} CPU cores; {rounds} round(s) per N, the apps taking turns; "
          "CPU is the median of the rounds.\n")  # fmt: skip
    print("| app | N | CPU s / 1000 tokens | lag p50 ms | lag p99 ms | TTFT p50 ms | "
          "TTFT p99 ms | events / answer | wrong answers |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for f in results:
        print(f"| {f.app} | {f.sessions} | {f.cpu_per_1k_tokens:.3f} | {f.lag_p50_ms:.0f} | "
              f"{f.lag_p99_ms:.0f} | {f.ttft_p50_ms:.0f} | {f.ttft_p99_ms:.0f} | "
              f"{f.events_per_answer:.0f} | {f.mismatches} |")  # fmt: skip
    offered = "offered by every client, as browsers do" if args.offer_deflate else "not offered"
    taken = {f.app: f.compressed for f in results}
    print(f"\nWebsocket compression (permessage-deflate, {offered}): "
          + "; ".join(f"{app}: {'on' if share == 1 else 'off' if share == 0 else f'{share:.0%}'}"
                      for app, share in taken.items()))  # fmt: skip
    by = {(f.app, f.sessions): f for f in results}
    base, ours = "baseline (stream_token per chunk)", "streamchat, GUARDRAILS=off"
    print("\nTargets (streaming path, GUARDRAILS=off, against the baseline in the same run):")
    ratios = {n: by[(ours, n)].cpu_per_1k_tokens / by[(base, n)].cpu_per_1k_tokens
              for n in counts if (ours, n) in by and (base, n) in by}  # fmt: skip
    if ratios:
        worst = max(ratios.values())
        per_n = ", ".join(f"N={n}: {r:.2f}" for n, r in ratios.items())
        print(f"- CPU per delivered token at most 1/4 of the baseline's: worst ratio "
              f"{worst:.2f} ({per_n}) -> {'PASS' if worst <= 0.25 else 'FAIL'}")  # fmt: skip
    if (ours, 25) in by and (base, 25) in by:
        lag = by[(ours, 25)].lag_p99_ms
        verdict = "PASS" if lag < 250 else "FAIL"
        print(f"- p99 delivery lag under 250 ms at N=25: {lag:.0f} ms (baseline "
              f"{by[(base, 25)].lag_p99_ms:.0f} ms) -> {verdict}")  # fmt: skip
    if (ours, 1) in by and (base, 1) in by:
        diff = by[(ours, 1)].ttft_p50_ms - by[(base, 1)].ttft_p50_ms
        print(f"- TTFT p50 within 10 ms of the baseline's at N=1: {diff:+.1f} ms -> "
              f"{'PASS' if diff <= 10 else 'FAIL'}")  # fmt: skip
    guarded = "streamchat, default guardrails"
    guard_ns = [n for n in counts if n in (25, 50) and (guarded, n) in by and (ours, n) in by]
    if guard_ns:
        print(
            "- default guardrails at most 1.25x the CPU per token of GUARDRAILS=off at N=25 "
            "and 50 (median of the rounds' ratios; a round runs the apps back to back):"
        )
        for n in guard_ns:
            paired, pairs = paired_ratio(by[(guarded, n)], by[(ours, n)])
            of_medians = by[(guarded, n)].cpu_per_1k_tokens / by[(ours, n)].cpu_per_1k_tokens
            print(f"  N={n}: {paired:.2f} (rounds {', '.join(f'{r:.2f}' for r in pairs)}; "
                  f"ratio of the medians {of_medians:.2f}) -> "
                  f"{'PASS' if paired <= 1.25 else 'FAIL'}")  # fmt: skip
    wrong = sum(f.mismatches for f in results)
    print(f"- every answer's text equals the upstream's: {wrong} wrong -> "
          f"{'PASS' if wrong == 0 else 'FAIL'}")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
