"""The event loop under `chainlit run`: asyncio's C Task and Future back, and uvloop.

`chainlit run` applies nest_asyncio, which swaps asyncio's C `Task` and `Future` for pure-Python
ones for the whole process, a tax on every await of every streamed token. On Python 3.11+ the
re-entrance it brings works with C tasks too; `use_c_tasks()` puts them back after checking that
precondition (asyncio's private `_current_tasks`), and leaves everything as it is otherwise.
`install_loop()` then makes the loop Chainlit runs a uvloop one (EVENT_LOOP), which does the
loop's work per wake-up in C; Chainlit's one nested run still works (`ReentrantUvloop`).
"""

from __future__ import annotations

import asyncio
import asyncio.futures
import asyncio.tasks
import logging
import warnings
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

try:
    import _asyncio
except ImportError:  # an interpreter built without the C accelerator
    _asyncio = None  # type: ignore[assignment]


def use_c_tasks() -> bool:
    """Restore asyncio's C Task and Future if nest_asyncio replaced them. True when C ones are
    (now) in use; False when this interpreter cannot have them safely."""
    if _asyncio is None:
        return False
    if asyncio.tasks.Task is _asyncio.Task and asyncio.futures.Future is _asyncio.Future:
        return True
    # nest_asyncio's re-entrance hides the running task in this dictionary; C tasks must see
    # the same one, or a nested run would fail with "Cannot enter into task ...".
    if getattr(asyncio.tasks, "_current_tasks", None) is not getattr(
        _asyncio, "_current_tasks", object()
    ):
        log.info("asyncio keeps pure-Python tasks: this Python keeps current tasks elsewhere")
        return False
    asyncio.Task = asyncio.tasks.Task = asyncio.tasks._CTask = _asyncio.Task  # type: ignore[misc,attr-defined]
    asyncio.Future = asyncio.futures.Future = asyncio.futures._CFuture = _asyncio.Future  # type: ignore[misc,attr-defined]
    return True


EVENT_LOOPS = ("auto", "uvloop", "asyncio")


@dataclass(frozen=True, slots=True)
class LoopChoice:
    """What `install_loop` did: the loop the app will run on, and a setting it could not follow
    (to log once logging is set up)."""

    loop: str
    problem: str | None = None


def install_loop(wanted: str = "auto") -> LoopChoice:
    """Make the loop `chainlit run` is about to start a uvloop one, as `wanted` (EVENT_LOOP)
    says.

    `auto` (the default) uses uvloop where it is installed (it is a dependency everywhere but
    Windows), `uvloop` insists on it, `asyncio` keeps the standard loop. Call it while the
    app module loads: Chainlit starts its loop afterwards, with the one set here. A loop that is
    already running is left alone. C tasks are restored first (whatever the loop), so uvloop's
    tasks are C ones too.
    """
    if wanted not in EVENT_LOOPS:
        raise ValueError(f"wanted must be one of {', '.join(EVENT_LOOPS)}, not {wanted!r}")
    use_c_tasks()
    problem = None
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:  # none running in this thread: the usual case, at import
        running = None
    if running is not None:
        return LoopChoice(loop_name(running), problem)
    if wanted == "asyncio":
        return LoopChoice("asyncio", problem)
    loop_class = _reentrant_uvloop()
    if loop_class is None:
        if wanted == "uvloop":
            problem = "EVENT_LOOP=uvloop, but uvloop is not installed: using asyncio's loop."
        return LoopChoice("asyncio", problem)
    loop = loop_class()
    _make_c_tasks(loop)
    _replace_current_loop(loop)
    return LoopChoice("uvloop", problem)


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """Which kind of loop this is: "uvloop" or "asyncio"."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    return "uvloop" if isinstance(loop, uvloop.Loop) else "asyncio"


def _make_c_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """uvloop makes tasks of the class asyncio had when uvloop was first imported: if that was
    while nest_asyncio's pure-Python class was in place, have the loop make C ones anyway."""

    async def probe() -> None:
        pass

    task = loop.create_task(probe())
    loop.run_until_complete(task)
    if _asyncio is not None and type(task) is not _asyncio.Task and use_c_tasks():
        loop.set_task_factory(_c_task)


def _c_task(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
    return _asyncio.Task(coro, loop=loop, **kwargs)


def _replace_current_loop(loop: asyncio.AbstractEventLoop) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old: asyncio.AbstractEventLoop | None = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:  # none yet, and this thread would not get one
        old = None
    asyncio.set_event_loop(loop)
    if old is not None and old is not loop and not old.is_running() and not old.is_closed():
        old.close()


def _reentrant_uvloop() -> type[asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None

    class ReentrantUvloop(uvloop.Loop):
        """uvloop, plus what Chainlit needs of a re-entrant loop.

        Chainlit computes a chat profile's config with `run_until_complete` on the running
        loop, a nested run that only nest_asyncio's loop supports in general. The coroutines it
        runs that way (the app's `set_chat_profiles`) finish without waiting for anything, and
        such a coroutine is run to its end on the spot. One that would wait is closed and
        refused with RuntimeError, as uvloop itself refuses nested runs.
        """

        def run_until_complete(self, future: Any) -> Any:
            if not self.is_running():
                return super().run_until_complete(future)
            return finish_without_waiting(future)

    return ReentrantUvloop


def finish_without_waiting(awaitable: Any) -> Any:
    """The result of a coroutine that completes without suspending, or of a done future."""
    if asyncio.isfuture(awaitable):
        if awaitable.done():
            return awaitable.result()
        raise RuntimeError("this event loop is already running (a nested run must not wait)")
    if not asyncio.iscoroutine(awaitable):
        raise TypeError(f"a coroutine or future was expected, not {type(awaitable).__name__}")
    try:
        awaitable.send(None)
    except StopIteration as finished:
        return finished.value
    awaitable.close()
    raise RuntimeError("this event loop is already running (a nested run must not wait)")
