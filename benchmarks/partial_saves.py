"""What saving an answer as it streams costs: one save (the data layer's upsert of the step and
its thread) of answers of several lengths, on SQLite and, when it is installed, PostgreSQL.

The stream never waits for these saves (they run in a task of their own, once per
PARTIAL_SAVE_S); the figures say what each costs the process and the database.

    python benchmarks/partial_saves.py [--saves 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chainlit.user import User

from streamchat.core.sinks import partial_answer_metadata
from streamchat.hosting.persistence import Database, StreamchatDataLayer


async def measure(database: Database, saves: int) -> list[tuple[int, float, float]]:
    layer = StreamchatDataLayer(database)
    await layer.create_schema()
    user = await layer.create_user(User(identifier=f"u{uuid.uuid4().hex[:8]}", metadata={}))
    assert user is not None
    thread_id = str(uuid.uuid4())
    await layer.update_thread(thread_id, name="bench", user_id=user.id)
    upsert = StreamchatDataLayer.create_step.__wrapped__  # type: ignore[attr-defined]
    rows = []
    for length in (1_000, 8_000, 32_000):
        text = ("word " * (length // 5))[:length]
        step = {
            "id": str(uuid.uuid4()),
            "threadId": thread_id,
            "name": "Assistant",
            "type": "assistant_message",
            "streaming": True,
            "output": text,
            "createdAt": "2026-12-04T10:00:00Z",
            "metadata": partial_answer_metadata(text, time.time()),
        }
        await upsert(layer, dict(step))  # the first save inserts; the rest update
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(saves):
            step["metadata"] = partial_answer_metadata(text, time.time())
            await upsert(layer, dict(step))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rows.append((length, wall / saves * 1000, cpu / saves * 1000))
    await layer.engine.dispose()
    return rows


@contextlib.contextmanager
def postgres() -> Iterator[str | None]:
    try:
        from tests.databases import postgres_server

        with postgres_server() as url:
            yield url
    except BaseException as exc:  # not installed here (a skip in the tests' helpers)
        print(f"PostgreSQL: not measured ({type(exc).__name__})")
        yield None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root, postgres() as pg_url:
        targets = [("SQLite (WAL)", Database.parse(f"sqlite:///{root}/bench.db"))]
        if pg_url is not None:
            targets.append(("PostgreSQL", Database.parse(pg_url)))
        print(f"{'database':<14}{'answer chars':>14}{'wall ms/save':>15}{'CPU ms/save':>14}")
        for name, database in targets:
            for length, wall_ms, cpu_ms in asyncio.run(measure(database, args.saves)):
                print(f"{name:<14}{length:>14}{wall_ms:>15.2f}{cpu_ms:>14.2f}")


if __name__ == "__main__":
    main()
