"""asyncio's C Task and Future back under `chainlit run`.

`chainlit run` calls `nest_asyncio.apply()` before it loads the app. Besides making the event
loop re-entrant (Chainlit itself nests `run_until_complete` to compute a chat profile's config),
that swaps asyncio's C `Task` and `Future` for their pure-Python versions for the whole
process, which makes every await that suspends, every future and every task step several times
dearer: a tax on every streamed token.

The swap is not needed for re-entrance on Python 3.11+: nest_asyncio's loop takes the current
task out of asyncio's `_current_tasks` around every callback it runs, and that dictionary is the
one the C tasks consult, so nested runs work with C tasks too. `use_c_tasks()` puts the C
classes back (tasks and futures created afterwards are C ones); it checks that precondition
first and leaves everything as it is when it does not hold.
"""

from __future__ import annotations

import asyncio
import asyncio.futures
import asyncio.tasks
import logging

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
