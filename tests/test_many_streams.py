"""500 concurrent answers in one app process at a slow upstream rate: no lost text, every
stream and upstream connection cleaned up, memory per stream bounded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx2
import pytest

from streamchat.offline import OfflineServer
from streamchat.offline.lessons import choose_answer
from streamchat.offline.tokens import tokenize
from tests.harness import AppProcess, ChainlitClient, strip_footer, upstream_requests

pytestmark = pytest.mark.integration

SESSIONS = 500
TOKENS = 8  # per answer, at 2 tokens/s: every answer is open for about four seconds at once


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError("no VmRSS")


async def test_five_hundred_concurrent_slow_answers_arrive_whole_and_clean_up():
    with OfflineServer(tokens_per_second=2, first_token_delay_ms=50) as slow:
        env = {
            "OPENAI_BASE_URL": slow.base_url,
            "MAX_TOKENS": str(TOKENS),
            "SHOW_METRICS": "false",
            "GUARDRAILS": "off",
            "LOG_LEVEL": "WARNING",
        }
        with AppProcess(env, startup_timeout=120) as app:
            clients = [ChainlitClient(app.url) for _ in range(SESSIONS)]
            for batch in range(0, SESSIONS, 50):  # connect in batches, as users arrive
                await asyncio.gather(*(c.connect() for c in clients[batch : batch + 50]))
            before = rss_mb(app.pid)
            questions = [f"What is a token? (session {i})" for i in range(SESSIONS)]
            marks = await asyncio.gather(
                *(c.send(q) for c, q in zip(clients, questions, strict=True))
            )
            answers = await asyncio.gather(
                *(c.finished(m, within=240) for c, m in zip(clients, marks, strict=True))
            )
            peak = rss_mb(app.pid)
            records = await upstream_requests(slow, SESSIONS, within=30)
            by_question = {r.messages[-1]["content"]: r for r in records}
            for question, answer in zip(questions, answers, strict=True):
                intended = "".join(tokenize(choose_answer(by_question[question].messages))[:TOKENS])
                assert strip_footer(answer.final_assistant_text()) == intended
            assert all(r.completed for r in records), "every upstream request ran to its end"
            async with httpx2.AsyncClient(base_url=app.url, timeout=30) as http:
                metrics = (await http.get("/metrics")).text
            assert "streamchat_streams_active 0.0" in metrics
            await asyncio.gather(*(c.close() for c in clients))
            # A few hundred kilobytes per open answer at most (sessions included).
            assert (peak - before) / SESSIONS < 0.5, f"{peak - before:.0f} MB for {SESSIONS}"
