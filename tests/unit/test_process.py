"""Startup objects are frozen out of the garbage collector's full collections."""

from __future__ import annotations

import gc
import weakref

from nofx.process import freeze_startup_objects


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_objects_alive_at_freeze_are_not_scanned_again_and_later_ones_are():
    before = [object(), [1, 2]]  # a tracked container alive at the freeze
    try:
        frozen = freeze_startup_objects("test")
        after = [3, 4]  # allocated later: collected as usual
        tracked = {id(o) for o in gc.get_objects()}
        # (the count can drop a little later: a frozen object still dies when unreferenced)
        assert frozen > 0 and gc.get_freeze_count() > 0
        assert id(before) not in tracked and id(after) in tracked
    finally:
        gc.unfreeze()


def test_garbage_is_collected_first_not_frozen_for_good():
    gc.disable()  # no automatic collection may free it before the freeze
    try:
        garbage = weakref.ref(_Node())  # unreachable already, kept alive only by its cycle
        assert garbage() is not None
        freeze_startup_objects("test")
        assert garbage() is None
    finally:
        gc.enable()
        gc.unfreeze()
