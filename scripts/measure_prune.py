#!/usr/bin/env python
"""Measure ``nofx prune``: how many old runs a second it deletes, with what they own.

Makes a scratch Postgres database (dropped at the end) and a scratch artifact folder, fills
them with ``--runs`` runs that ended 40 days ago, each with 10 steps, 20 events and one
stored file, then prunes runs older than 30 days as ``nofx prune`` does (one run at a time:
lock, remove its files, delete its rows, commit) and prints the figures as JSON.

    .venv/bin/python scripts/measure_prune.py [--runs 5000]

Needs Postgres on loopback (``NOFX_TEST_PG``, default postgresql+psycopg://postgres@127.0.0.1:5432).
File storage only: on S3 each run adds a listing and a delete request.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

PG = os.environ.get("NOFX_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")

FILL = [
    """INSERT INTO runs (id, status, goal, plan, created_at, updated_at, ended_at)
       SELECT gen_random_uuid()::text, 'succeeded', 'g', '{"goal": "g", "steps": []}'::jsonb,
              now() - interval '40 days', now() - interval '40 days', now() - interval '40 days'
       FROM generate_series(1, :n)""",
    """INSERT INTO steps (id, run_id, index, name, tool, status, inputs, attempt, max_attempts,
                         timeout_s, updated_at, ended_at)
       SELECT gen_random_uuid()::text, r.id, i, 's' || i, 'echo', 'succeeded', '{}'::jsonb, 1,
              3, 30, r.updated_at, r.ended_at
       FROM runs r, generate_series(0, 9) AS i""",
    """INSERT INTO events (run_id, step_id, type, payload, created_at)
       SELECT s.run_id, s.id, t, '{}'::jsonb, s.updated_at
       FROM steps s, unnest(ARRAY['step.started', 'step.finished']) AS t""",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5000)
    args = parser.parse_args()

    from sqlalchemy import create_engine, text

    name = f"nofx_prune_{uuid.uuid4().hex[:8]}"
    admin = create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    folder = Path(tempfile.mkdtemp(prefix="nofx-prune-"))
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        os.environ.update(NOFX_DATABASE_URL=f"{PG}/{name}", NOFX_LOG_LEVEL="WARNING",
                          NOFX_DATA_DIR=str(folder))
        from nofx.db.engine import dispose_engines, get_engine
        from nofx.db.migrate import upgrade
        from nofx.services.retention import prune
        from nofx.storage.filesystem import FileStorage

        upgrade()
        store = FileStorage(folder / "artifacts")
        with get_engine().begin() as conn:
            for statement in FILL:
                conn.execute(text(statement), {"n": args.runs})
            ids = conn.execute(text("SELECT id FROM runs")).scalars().all()
        for run_id in ids:
            store.put(f"runs/{run_id}/steps/s/1/out.txt", b"hello", "text/plain")

        started = time.perf_counter()
        done = prune(timedelta(days=30), storage=store)
        seconds = time.perf_counter() - started
        print(json.dumps({"runs": done.runs, "files": done.files, "seconds": round(seconds, 2),
                          "runs_per_s": round(done.runs / seconds, 1)}))
        dispose_engines()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
