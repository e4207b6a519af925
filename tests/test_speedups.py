"""The speed-ups switch: STREAM_SPEEDUPS=off leaves every one of them out and the app on public
APIs; a speed-up whose private import fails steps aside without stopping the app; which ones are
off, and why, is logged once at startup."""

from __future__ import annotations

import json
import logging

import pytest

from streamchat import speedups
from streamchat.core.provider import Provider
from streamchat.settings import Settings, SpeedupChoices
from tests.harness import probe_app


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a process that has installed nothing and logged nothing."""
    monkeypatch.setattr(speedups, "_statuses", {})
    monkeypatch.setattr(speedups, "_installed", None)
    monkeypatch.setattr(speedups, "_logged", False)


# What importing app.py (after `chainlit run`'s cli, as it runs) leaves in the process.
APP_PROBE = """
import asyncio, json, warnings
import chainlit.cli
import app
import uvicorn
from streamchat import speedups
from streamchat.speedups.eventloop import loop_name
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    loop = asyncio.get_event_loop_policy().get_event_loop()
print(json.dumps({
    "server": uvicorn.Server.__name__,
    "config": uvicorn.Config.__name__,
    "c_tasks": asyncio.Task.__module__ == "_asyncio",
    "loop": loop_name(loop),
    "updates": speedups.socket_updates_on(),
    "fast": speedups.fast_stream_module() is not None,
    "status": {s.name: [s.on, s.why] for s in speedups.status()},
}))
"""


@pytest.mark.parametrize("word", ["off", "false", "no", "0"])
def test_with_speedups_off_the_app_installs_none_and_runs_on_public_apis(word):
    seen = json.loads(probe_app(APP_PROBE, STREAM_SPEEDUPS=word))
    assert seen["server"] == "Server" and seen["config"] == "Config", "uvicorn's own"
    assert not seen["c_tasks"], "Chainlit's tasks as nest_asyncio left them"
    assert seen["loop"] != "uvloop"
    assert not seen["updates"] and not seen["fast"]
    assert seen["status"] and all(
        state == [False, "STREAM_SPEEDUPS=off"] for state in seen["status"].values()
    )


@pytest.mark.parametrize("word", ["on", "true"])
def test_with_speedups_on_every_one_is_installed(word):
    seen = json.loads(probe_app(APP_PROBE, STREAM_SPEEDUPS=word, EVENT_LOOP="auto"))
    assert seen["server"] == "QuietServer" and seen["config"] == "ChosenCompressionConfig"
    assert seen["c_tasks"] and seen["loop"] == "uvloop"
    assert seen["updates"] and seen["fast"]
    assert set(seen["status"]) == {
        "C tasks",
        "event loop",
        "quiet server",
        "websocket compression",
        "socket updates",
        "frozen start-up heap",
        "fast stream",
    }
    assert all(on for on, _ in seen["status"].values())


def test_a_private_import_that_fails_does_not_stop_the_app_and_is_logged_once_at_startup():
    """As when an openai release moves a private module: the app still imports and starts,
    answers stream through the SDK's own stream, and startup says which speed-up is off."""
    probe = (
        "import sys, logging, io\n"
        "import openai\n"
        "sys.modules['openai._base_client'] = None  # as if this openai had moved it\n"
        "import chainlit.cli\nimport app\n"
        "from streamchat import speedups\n"
        "from streamchat.core.provider import Provider\n"
        "stream = io.StringIO()\n"
        "log = logging.getLogger('probe')\n"
        "log.addHandler(logging.StreamHandler(stream)); log.setLevel(logging.INFO)\n"
        "speedups.log_status(log); speedups.log_status(log)\n"
        "assert not Provider(base_url='http://127.0.0.1:9/v1').fast\n"
        "print(repr(stream.getvalue()))"
    )
    logged = eval(probe_app(probe, STREAM_SPEEDUPS="on"))
    lines = logged.splitlines()
    assert len(lines) == 2, "one summary and one warning, once"
    assert "quiet server: on" in lines[0]
    assert "fast stream: off (this openai (" in lines[0]
    assert lines[1].startswith("speed-up fast stream is off: this openai (")
    assert lines[1].endswith(") has no openai._base_client")


def test_the_fast_stream_steps_aside_when_the_sdk_is_not_the_one_it_knows(monkeypatch):
    from streamchat.speedups import fast_stream

    monkeypatch.setattr(fast_stream, "PROBLEM", "this openai (9.0) has no _response")
    assert speedups.fast_stream_module() is None
    assert not Provider(base_url="http://127.0.0.1:9/v1").fast
    (state,) = speedups.status()
    assert state == speedups.Status("fast stream", False, "this openai (9.0) has no _response")


def test_the_provider_takes_the_sdks_own_stream_with_speedups_off():
    assert Provider(base_url="http://127.0.0.1:9/v1").fast
    assert not Provider(base_url="http://127.0.0.1:9/v1", speedups=False).fast


def test_install_with_speedups_off_changes_nothing_and_says_why(monkeypatch):
    import asyncio

    import uvicorn

    before = (uvicorn.Server, uvicorn.Config, asyncio.Task, asyncio.get_event_loop_policy())
    states = speedups.install(speedups.Speedups(enabled=False), sio=object())
    assert (uvicorn.Server, uvicorn.Config, asyncio.Task, asyncio.get_event_loop_policy()) == (
        before
    )
    assert {s.name for s in states} == {
        "C tasks",
        "event loop",
        "quiet server",
        "websocket compression",
        "socket updates",
        "frozen start-up heap",
        "fast stream",
    }
    assert all(not s.on and s.why == "STREAM_SPEEDUPS=off" for s in states)
    assert speedups.fast_stream_module() is None, "asked later, still off"
    assert speedups.browser_updates(object(), object()) is None
    assert not speedups.quiet_servers_on()


def test_socket_updates_step_aside_for_a_socketio_server_they_do_not_know(monkeypatch):
    from streamchat.speedups import eventloop, serving

    monkeypatch.setattr(eventloop, "use_c_tasks", lambda: False)
    monkeypatch.setattr(eventloop, "install_loop", lambda wanted: eventloop.LoopChoice("asyncio"))
    monkeypatch.setattr(serving, "install_quiet_server", lambda: None)
    monkeypatch.setattr(serving, "install_websocket_compression", lambda on: None)
    states = {s.name: s for s in speedups.install(speedups.Speedups(), sio=object())}
    assert states["socket updates"] == speedups.Status(
        "socket updates", False, "this engine.io server keeps no dictionary of sockets"
    )
    assert speedups.browser_updates(object(), object()) is None
    assert states["C tasks"] == speedups.Status(
        "C tasks", False, "this Python keeps them elsewhere"
    )


def _install_without_process_wide_changes(monkeypatch: pytest.MonkeyPatch, **choices) -> None:
    from streamchat.speedups import eventloop, serving

    monkeypatch.setattr(eventloop, "use_c_tasks", lambda: False)
    monkeypatch.setattr(eventloop, "install_loop", lambda wanted: eventloop.LoopChoice("asyncio"))
    monkeypatch.setattr(serving, "install_quiet_server", lambda: None)
    monkeypatch.setattr(serving, "install_websocket_compression", lambda on: None)
    speedups.install(speedups.Speedups(**choices))


def test_the_start_up_heap_is_frozen_once_started_so_full_collections_skip_it(monkeypatch):
    import gc

    assert speedups.freeze_startup_heap() == 0, "nothing before install"
    _install_without_process_wide_changes(monkeypatch)
    assert speedups.Status("frozen start-up heap", True) in speedups.status()
    kept = [[index] for index in range(1000)]  # long-lived objects, as modules hold
    try:
        frozen = speedups.freeze_startup_heap()
        assert frozen > len(kept)
        # What was alive is out of the generations a collection walks.
        walked = {id(item) for item in gc.get_objects()}
        assert not any(id(item) in walked for item in kept)
        # A later full collection walks only what came after, and still frees its cycles.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
        # It freezes nothing more (frozen objects that die, in any thread, leave the count).
        assert gc.get_freeze_count() <= frozen
    finally:
        gc.unfreeze()
    assert kept[-1] == [999]


def test_with_speedups_off_nothing_is_frozen(monkeypatch):
    import gc

    speedups.install(speedups.Speedups(enabled=False))
    assert speedups.freeze_startup_heap() == 0
    assert gc.get_freeze_count() == 0
    assert speedups.Status("frozen start-up heap", False, "STREAM_SPEEDUPS=off") in (
        speedups.status()
    )


def test_the_status_is_logged_once(caplog):
    speedups._record("quiet server", None)
    speedups._record("socket updates", "this engine.io server keeps no dictionary of sockets")
    speedups._record("fast stream", "STREAM_SPEEDUPS=off")
    log = logging.getLogger("test.speedups")
    with caplog.at_level(logging.INFO, logger="test.speedups"):
        speedups.log_status(log)
        speedups.log_status(log)
    assert [r.getMessage() for r in caplog.records] == [
        "speed-ups: quiet server: on; socket updates: off (this engine.io server keeps no "
        "dictionary of sockets); fast stream: off (STREAM_SPEEDUPS=off)",
        "speed-up socket updates is off: this engine.io server keeps no dictionary of sockets",
    ]
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.WARNING]


@pytest.mark.parametrize(
    ("word", "on"),
    [(None, True), ("", True), ("on", True), ("true", True), ("off", False), ("false", False)],
)
def test_stream_speedups_reads_like_every_flag(word, on):
    environ = {} if word is None else {"STREAM_SPEEDUPS": word}
    assert Settings.from_env(environ).speedups is on
    assert SpeedupChoices.from_env(environ).enabled is on


def test_a_speedups_value_it_cannot_follow_is_reported_and_the_default_kept():
    choices = SpeedupChoices.from_env({"STREAM_SPEEDUPS": "fast", "EVENT_LOOP": "asyncio"})
    assert choices.enabled and choices.event_loop == "asyncio"
    (problem,) = choices.problems
    assert problem.startswith("STREAM_SPEEDUPS must be true or false")
    assert problem.endswith("Using the default, true.")


@pytest.mark.parametrize(("word", "quiet"), [("off", False), ("on", True)])
async def test_the_offline_model_runs_on_uvicorns_own_server_with_speedups_off(word, quiet):
    from streamchat.runtime import Runtime
    from streamchat.speedups.serving import QuietServer

    runtime = Runtime(Settings.from_env({"STREAM_SPEEDUPS": word}))
    await runtime.start()
    try:
        assert runtime.offline_server is not None
        assert isinstance(runtime.offline_server._server, QuietServer) is quiet
    finally:
        await runtime.aclose()
