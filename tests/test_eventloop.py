"""`chainlit run` swaps asyncio's C tasks for pure-Python ones (nest_asyncio); the app swaps
them back. Checked in a fresh interpreter, as `chainlit run` sets the process up."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import asyncio, _asyncio
    import chainlit.cli  # applies nest_asyncio, as `chainlit run` does before loading app.py
    assert asyncio.tasks.Task is not _asyncio.Task, "nest_asyncio made tasks pure Python"

    from streamchat.eventloop import use_c_tasks
    assert use_c_tasks() and use_c_tasks(), "restored, and a second call changes nothing"

    async def inner():
        await asyncio.sleep(0.01)
        return 42

    async def outer(tag):
        me = asyncio.current_task()
        # What Chainlit does for a chat profile's config: a nested run on the running loop.
        value = asyncio.get_event_loop().run_until_complete(inner())
        assert asyncio.current_task() is me
        await asyncio.sleep(0)
        return tag, value

    async def main():
        assert type(asyncio.current_task()) is _asyncio.Task
        assert type(asyncio.get_running_loop().create_future()) is _asyncio.Future
        return await asyncio.gather(outer("a"), outer("b"))

    print(asyncio.run(main()))
    """
)


def test_c_tasks_come_back_under_chainlit_and_nested_runs_still_work():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[('a', 42), ('b', 42)]"


def test_use_c_tasks_is_a_no_op_where_nothing_was_replaced():
    import _asyncio
    import asyncio

    from streamchat.eventloop import use_c_tasks

    assert use_c_tasks()
    assert asyncio.Task is _asyncio.Task
