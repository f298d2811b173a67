"""An event stream's slot (``NOFX_SSE_MAX_STREAMS``) is given back exactly once, however its
response ends: closed by the server, or dropped unclosed (an ``after_request`` hook that
raises makes Flask drop the response without closing it)."""

from __future__ import annotations

import gc

from nofx.api import stream

RUN = "3f0f6bd4-4a55-4c38-9b1c-1b6f7f1f2a10"


def test_a_stream_dropped_without_being_closed_gives_its_slot_back():
    before = stream.SLOTS.open
    response = stream.response(RUN, 0, stream.Pace(), max_streams=before + 1)
    assert stream.SLOTS.open == before + 1

    del response
    gc.collect()

    assert stream.SLOTS.open == before


def test_a_closed_stream_gives_its_slot_back_once():
    before = stream.SLOTS.open
    response = stream.response(RUN, 0, stream.Pace(), max_streams=before + 1)

    response.close()
    response.close()
    del response
    gc.collect()

    assert stream.SLOTS.open == before


def test_a_slot_given_back_by_the_collector_inside_take_does_not_deadlock():
    # The collector may run a finalizer in any thread, at any allocation: even in the
    # thread that holds the slots' lock, inside take(). give() must not wait for that lock.
    import threading

    slots = stream.Slots()
    assert slots.take(1)

    def collector_inside_take() -> None:
        with slots._lock:
            slots.give()

    worker = threading.Thread(target=collector_inside_take, daemon=True)
    worker.start()
    worker.join(2.0)
    assert not worker.is_alive(), "give() waited for a lock its own thread holds"
    assert slots.open == 0 and slots.take(1)
