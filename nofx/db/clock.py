"""How far this host's clock is from the database server's.

Every timestamp NOFX writes comes from the clock of the host that writes it
(:func:`nofx.status.now`), and some are judged on another host: the reaper, in beat, compares
a step's heartbeat, written by its worker, with its own clock. Hosts whose clocks disagree by
more than ``NOFX_STUCK_AFTER_S`` would have live steps reaped, or dead ones left longer. NOFX
cannot fix a clock, but each process says at start how far its clock is from the database
server's, the one clock every host reaches, and ``GET /health/detailed`` shows the API's.
Postgres only: SQLite lives on the one host that uses it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Connection, text

from nofx.config import Settings


def skew_s(conn: Connection, clock: Callable[[], float] = time.time) -> float | None:
    """This host's clock minus the database server's, in seconds (half the round trip is
    allowed for); ``None`` where the database has no clock of its own (SQLite)."""
    if conn.dialect.name != "postgresql":
        return None
    before = clock()
    server = conn.execute(text("SELECT extract(epoch FROM clock_timestamp())")).scalar_one()
    after = clock()
    return round((before + after) / 2 - float(server), 3)


def tolerance_s(settings: Settings) -> float:
    """The skew past which NOFX warns: a tenth of ``NOFX_STUCK_AFTER_S``, at least 1 s."""
    return max(1.0, settings.stuck_after_s / 10)


def skew_problem(skew: float | None, settings: Settings) -> str | None:
    """What a skew past :func:`tolerance_s` risks, or ``None``."""
    if skew is None or abs(skew) <= tolerance_s(settings):
        return None
    side = "ahead of" if skew > 0 else "behind"
    return (f"this host's clock is {abs(skew):.1f}s {side} the database server's: NOFX "
            "judges timestamps written on one host with another's clock (the reaper, a "
            "step's heartbeat), so clocks more than NOFX_STUCK_AFTER_S "
            f"({settings.stuck_after_s:g}s) apart get live steps reaped; keep every host's "
            "clock in sync (NTP)")
