"""`chainlit run` swaps asyncio's C tasks for pure-Python ones (nest_asyncio); the app swaps
them back and runs on uvloop (EVENT_LOOP). Checked in a fresh interpreter, as `chainlit run`
sets the process up."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap

import pytest

from streamchat.speedups.eventloop import install_loop, loop_name

SCRIPT = textwrap.dedent(
    """
    import asyncio, _asyncio
    import chainlit.cli  # applies nest_asyncio, as `chainlit run` does before loading app.py
    assert asyncio.tasks.Task is not _asyncio.Task, "nest_asyncio made tasks pure Python"

    from streamchat.speedups.eventloop import use_c_tasks
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

    from streamchat.speedups.eventloop import use_c_tasks

    assert use_c_tasks()
    assert asyncio.Task is _asyncio.Task


UVLOOP_SCRIPT = textwrap.dedent(
    """
    import asyncio, _asyncio, sys, types
    import chainlit.cli  # applies nest_asyncio, as `chainlit run` does before loading app.py
    from chainlit.config import ChainlitConfigOverrides, UISettings, config
    from chainlit.session import WebsocketSession
    from chainlit.types import ChatProfile
    from chainlit.utils import wrap_user_function

    from streamchat.speedups.eventloop import LoopChoice, install_loop, loop_name

    assert install_loop() == LoopChoice("uvloop")
    import uvloop

    async def profiles(user, language):
        overrides = ChainlitConfigOverrides(ui=UISettings(name="Overridden"))
        return [ChatProfile(name="Lesson", markdown_description="", config_overrides=overrides)]

    async def waits():
        await asyncio.sleep(0.01)
        return 1

    async def main():
        loop = asyncio.get_running_loop()
        assert isinstance(loop, uvloop.Loop) and loop_name(loop) == "uvloop"
        assert type(asyncio.current_task()) is _asyncio.Task
        assert type(loop.create_future()) is _asyncio.Future
        # What Chainlit does for a chat profile's config: a nested run on the running loop.
        config.code.set_chat_profiles = wrap_user_function(profiles)
        session = types.SimpleNamespace(chat_profile="Lesson", user=None, language="en-US")
        assert WebsocketSession.get_config(session).ui.name == "Overridden"
        # A nested run that would wait is refused, and the coroutine is closed, not leaked.
        coroutine = waits()
        try:
            loop.run_until_complete(coroutine)
        except RuntimeError as exc:
            assert "already running" in str(exc)
        else:
            raise AssertionError("a nested run that waits must be refused")
        assert coroutine.cr_frame is None
        done = loop.create_future()
        done.set_result(7)
        assert loop.run_until_complete(done) == 7
        return await waits()

    print(asyncio.run(main()))
    """
)


def run_script(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_chainlit_runs_on_uvloop_with_c_tasks_and_a_chat_profiles_nested_run_still_works():
    done = run_script(UVLOOP_SCRIPT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    assert "never awaited" not in done.stderr


CHOICE_SCRIPT = textwrap.dedent(
    """
    import asyncio, _asyncio, json, os, sys
    if os.environ.get("HIDE_UVLOOP"):
        sys.modules["uvloop"] = None  # as if it were not installed
    import chainlit.cli
    if os.environ.get("UVLOOP_FIRST"):
        import uvloop  # imported while nest_asyncio's pure-Python tasks are in place
    from streamchat.settings import SpeedupChoices
    from streamchat.speedups.eventloop import install_loop, loop_name

    read = SpeedupChoices.from_env({"EVENT_LOOP": os.environ["CHOICE"]})
    choice = install_loop(read.event_loop)
    problem = " ".join(read.problems) or choice.problem

    async def main():
        assert type(asyncio.current_task()) is _asyncio.Task
        return loop_name(asyncio.get_running_loop())

    print(json.dumps([choice.loop, problem, asyncio.run(main())]))
    """
)


@pytest.mark.parametrize(
    ("choice", "env", "runs", "problem"),
    [
        ("asyncio", {}, "asyncio", None),
        (" UVLOOP ", {}, "uvloop", None),
        ("auto", {"UVLOOP_FIRST": "1"}, "uvloop", None),
        ("auto", {"HIDE_UVLOOP": "1"}, "asyncio", None),
        ("uvloop", {"HIDE_UVLOOP": "1"}, "asyncio", "but uvloop is not installed"),
        ("fast", {}, "uvloop", "EVENT_LOOP must be one of auto, uvloop, asyncio (got 'fast')"),
    ],
)
def test_event_loop_setting(choice, env, runs, problem):
    env = {"CHOICE": choice, **env}
    done = run_script(CHOICE_SCRIPT, **env)
    assert done.returncode == 0, done.stderr
    chosen, said, ran = json.loads(done.stdout)
    assert chosen == ran == runs
    assert (said is None) if problem is None else (problem in said)


async def test_a_running_loop_is_left_alone():
    loop = asyncio.get_running_loop()
    assert install_loop("uvloop").loop == loop_name(loop)
    assert asyncio.get_running_loop() is loop


def test_a_loop_choice_it_does_not_know_is_refused():
    with pytest.raises(ValueError, match="auto, uvloop, asyncio"):
        install_loop("fast")
