"""Start-up's objects are frozen out of garbage collection, after start-up's garbage is gone."""

from __future__ import annotations

import gc
import weakref

from streamchat.runtime import freeze_startup_heap


class Node:
    other: object = None


def test_start_up_objects_are_frozen_and_start_up_garbage_is_collected_first():
    first, second = Node(), Node()
    first.other, second.other = second, first  # a cycle: only the collector frees it
    garbage = weakref.ref(first)
    del first, second
    kept = Node()
    try:
        count = freeze_startup_heap()
        assert garbage() is None, "garbage from start-up is collected, not kept frozen"
        assert count == gc.get_freeze_count() > 0
        assert not any(o is kept for o in gc.get_objects()), "left out of every collection"
        later = Node()
        assert any(o is later for o in gc.get_objects()), "what comes after is collected"
    finally:
        gc.unfreeze()
