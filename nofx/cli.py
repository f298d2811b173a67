"""The ``nofx`` command (also ``python manage.py``): run NOFX, migrate it, and drive runs."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from nofx import __version__

EXAMPLE = "examples/hello-readme.json"


class _Nofx(click.Group):
    """The ``nofx`` group: a bad setting or an unreachable database is one line naming it,
    not a traceback (the processes' own logs keep the details)."""

    def invoke(self, ctx: click.Context) -> Any:
        from sqlalchemy.exc import SQLAlchemyError

        from nofx.config import ConfigError

        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # The reader stopped (`nofx runs events ID | head`): as for any Unix filter,
            # that is no error. Python would report it again flushing stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(0) from None
        except ConfigError as exc:
            raise click.ClickException(f"configuration: {exc}") from None
        except SQLAlchemyError as exc:
            raise click.ClickException(
                f"database {_configured_database()}: "
                f"{getattr(exc, 'orig', None) or exc}".splitlines()[0]) from None


@click.group(cls=_Nofx,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="nofx")
def main() -> None:
    """NOFX: submit plans of AI steps, run them on Celery, watch every transition.

    \b
    Start everything on this machine (no servers needed):   nofx dev
    Submit a plan and wait for it:                          nofx runs submit PLAN.json --wait
    Production processes:                                   nofx api | celery -A nofx.worker worker|beat
    Configuration is read from NOFX_* environment variables (see docs/configuration.md).
    """


# -- processes -----------------------------------------------------------------------------


@main.command()
@click.option("--submit", "plan_path", type=click.Path(exists=True, dir_okay=False),
              help="Submit this plan once NOFX is up, show its progress and where its artifacts are.")
@click.option("--exit", "exit_after", is_flag=True,
              help="With --submit: stop NOFX after the run ends; exit 0 only if it succeeded.")
@click.option("--concurrency", default=2, show_default=True, help="Worker processes.")
def dev(plan_path: str | None, exit_after: bool, concurrency: int) -> None:
    """Run API, worker and beat together on this machine, with embedded defaults.

    With no configuration this needs no servers: SQLite, a filesystem broker and
    filesystem artifacts under NOFX_DATA_DIR (./.nofx), and an offline LLM. Set NOFX_*
    variables to use Postgres, Redis/RabbitMQ, S3 and Anthropic instead.
    Logs go to NOFX_DATA_DIR/logs/. The API listens on NOFX_API_HOST:NOFX_API_PORT
    (127.0.0.1:8000) and the worker's metrics on NOFX_WORKER_METRICS_PORT (9546; 0 turns
    them off): set them to run a second NOFX beside this one.

    Stop with Ctrl-C: running steps get up to 20 s to finish; Ctrl-C again stops
    everything at once. Nothing is left running either way.
    """
    from nofx.devserver import DevServer

    server = DevServer(concurrency=concurrency)
    sys.exit(server.main(Path(plan_path) if plan_path else None, exit_after))


@main.command()
@click.option("--host", help="Address to bind [NOFX_API_HOST, default 127.0.0.1].")
@click.option("--port", type=int, help="Port to bind [NOFX_API_PORT, default 8000].")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="gunicorn worker processes [NOFX_API_WORKERS, default 2].")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads per process; each open event stream holds one "
                   "[NOFX_API_THREADS, default 8].")
@click.option("--allow-open", is_flag=True,
              help="Bind a non-loopback address without NOFX_API_TOKEN (not recommended) "
                   "[NOFX_API_ALLOW_OPEN].")
def api(host: str | None, port: int | None, workers: int | None, threads: int | None,
        allow_open: bool) -> None:
    """Serve the HTTP API under gunicorn (production)."""
    if host:
        os.environ["NOFX_API_HOST"] = host
    if port:
        os.environ["NOFX_API_PORT"] = str(port)
    if workers:
        os.environ["NOFX_API_WORKERS"] = str(workers)
    if threads:
        os.environ["NOFX_API_THREADS"] = str(threads)
    if allow_open:
        os.environ["NOFX_API_ALLOW_OPEN"] = "1"
    from nofx.config import reset_settings

    reset_settings()
    _refuse_open_bind()
    os.execvp(sys.executable, [sys.executable, "-m", "gunicorn", "-c",
                               "python:nofx.api.gunicorn_conf", "nofx.api:create_app()"])


def _refuse_open_bind() -> None:
    from nofx.api.gunicorn_conf import open_bind_problem

    problem = open_bind_problem()
    if problem:
        raise click.ClickException(problem)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Start a Celery worker (prefork) with worker metrics on NOFX_WORKER_METRICS_PORT.

    The same as `celery -A nofx.worker worker --pool prefork -l INFO`: the worker itself
    sets up its metrics directory (under PROMETHEUS_MULTIPROC_DIR, or a temp dir) and
    endpoint. Extra arguments go to `celery worker`, e.g. `nofx worker -c 4 -B`; its own
    options are listed by `celery -A nofx.worker worker --help`.
    """
    os.execvp(sys.executable, [sys.executable, "-m", "celery", "-A", "nofx.worker", "worker",
                               "--pool", "prefork", "-l", "INFO", *ctx.args])


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                               "help_option_names": []})  # --help is the benchmarks' own
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Run a benchmark from a checkout: nofx bench SCENARIO [--tiny] (--help lists them).

    The same as `python -m bench ...`: chain, throughput, api, scale, memory, roundtrips or
    all, each beside bare Celery where it has an equivalent. `nofx bench --help` is the
    benchmarks' own help (what each scenario measures). Results go to bench/results/; the
    published figures and the machine are in docs/benchmarks.md.
    """
    checkout = Path(__file__).resolve().parent.parent  # an editable install's checkout
    if (checkout / "bench" / "__main__.py").exists() and str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    try:
        from bench.__main__ import main as bench_main
    except ImportError as exc:
        raise click.ClickException("benchmarks run from a checkout of NOFX (bench/ is not "
                                   "installed with the package)") from exc
    sys.exit(bench_main(ctx.args, prog="nofx bench"))


@main.command()
def reap() -> None:
    """Run one reaper tick now, here, and print what it did (JSON).

    It acts on the database at NOFX_DATABASE_URL and sends runs through NOFX_BROKER_URL,
    named on stderr first: unset, they are this directory's embedded ones (./.nofx).
    """
    from nofx.config import get_settings
    from nofx.services.reaper import reap as reap_now

    settings = get_settings()
    click.echo(f"reaping {_safe_url(settings.database_url)} "
               f"(broker {_safe_url(settings.broker_url)})", err=True)
    _require_schema(settings.database_url)
    click.echo(json.dumps(reap_now()))


class Age(click.ParamType):
    """An age: ``30d``, ``12h``, ``90m`` or ``3600s`` (a bare number is days), at most 100
    years. Units are lower case: ``6M`` is refused rather than read as six minutes."""

    name = "age"
    UNITS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
    MAX_S = 100 * 365 * 86_400

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        from datetime import timedelta

        if isinstance(value, timedelta):
            return value
        text = str(value).strip()
        number, unit = (text[:-1], text[-1]) if text[-1:] in self.UNITS else (text, "d")
        try:
            seconds = float(number) * self.UNITS[unit]
        except ValueError:
            seconds = 0.0
        if not 0 < seconds <= self.MAX_S:
            self.fail(f"{value!r} is not an age: write it as 30d, 12h, 90m or 3600s "
                      "(lower case; at most 100 years)", param, ctx)
        return timedelta(seconds=seconds)


def _age(age: Any) -> str:
    """``30d``, ``12h``... for a timedelta, in the largest unit that divides it."""
    seconds = age.total_seconds()
    for unit, size in Age.UNITS.items():
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds}s"


@main.command()
@click.option("--older-than", "older_than", type=Age(), required=True,
              help="Prune runs that ended longer ago than this: 30d, 12h, 90m, 3600s.")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice(["succeeded", "failed", "cancelled"]),
              help="Only runs that ended so (repeat for more); default: all three.")
@click.option("--dry-run", is_flag=True, help="Only count what would go.")
@click.option("--batch", default=200, show_default=True, type=click.IntRange(min=1),
              help="Runs picked at a time; progress is shown after each batch.")
def prune(older_than: Any, statuses: tuple[str, ...], dry_run: bool, batch: int) -> None:
    """Delete ended runs older than --older-than, with their steps, events and artifacts.

    Runs still queued or running are never touched, nor one retried meanwhile. One run at
    a time, in a transaction: its stored files (NOFX_STORAGE_URL) are removed, then its
    rows. A run whose files cannot all be removed keeps its rows, and the prune stops
    there (exit 1); run it again once the store answers. Progress goes to stderr, a JSON
    summary to stdout. The counters behind /metrics are totals and stay as they are. A
    pruned run's Idempotency-Key may be used again. Safe to run while NOFX serves (e.g.
    daily, from cron or a Kubernetes CronJob). On S3 it needs to list and delete objects
    (s3:ListBucket, s3:DeleteObject).
    """
    from nofx.config import get_settings
    from nofx.services.retention import prune as prune_runs

    settings = get_settings()
    _require_schema(settings.database_url)
    wanted = statuses or ("succeeded", "failed", "cancelled")
    click.echo(f"{'counting' if dry_run else 'pruning'} {', '.join(wanted)} runs that ended "
               f"more than {_age(older_than)} ago in {_safe_url(settings.database_url)}",
               err=True)
    done = prune_runs(older_than, wanted, dry_run=dry_run, batch=batch, progress=lambda p: (
        click.echo(f"pruned {p.runs} runs ({p.files} files) so far", err=True)))
    click.echo(json.dumps(done.as_dict()))
    if done.kept:
        run_id, error = next(iter(done.kept.items()))
        raise click.ClickException(
            f"stopped: the files of run {run_id} could not all be removed, so the run is "
            f"kept (some of its files may be gone; prune again once the store answers): "
            f"{error}")


def _require_schema(url: str) -> None:
    """Stop, saying why, unless ``url`` holds NOFX's schema: a mistyped or forgotten
    NOFX_DATABASE_URL must not create an empty SQLite file and fail on it."""
    from nofx.db.engine import get_engine
    from nofx.db.migrate import revision, schema_problem

    if _sqlite_file_missing(url):
        raise click.ClickException(
            f"no database at {url}: set NOFX_DATABASE_URL to NOFX's database "
            "(or run `nofx db upgrade` to make this one)")
    with get_engine(url).connect() as conn:
        found = revision(conn)
    if found is None:
        raise click.ClickException(
            f"the database at {_safe_url(url)} has no NOFX schema: set NOFX_DATABASE_URL to "
            "NOFX's database (or run `nofx db upgrade` to make this one)")
    problem = schema_problem(found)
    if problem:
        raise click.ClickException(f"the database at {_safe_url(url)}: {problem}")


def _sqlite_file_missing(url: str) -> bool:
    """Whether ``url`` is a SQLite file that does not exist (connecting would make it)."""
    from nofx.db.engine import sqlite_file

    path = sqlite_file(url)
    return path is not None and not path.exists()


def _configured_database() -> str:
    try:
        from nofx.config import get_settings

        return _safe_url(get_settings().database_url)
    except Exception:  # the settings themselves may be what failed
        return "at NOFX_DATABASE_URL"


# -- database ------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema (Alembic)."""


@db.command()
@click.option("--revision", default="head", show_default=True)
def upgrade(revision: str) -> None:
    """Create or migrate the schema at NOFX_DATABASE_URL."""
    from nofx.config import get_settings
    from nofx.db.engine import get_engine
    from nofx.db.migrate import revision as found
    from nofx.db.migrate import upgrade as do_upgrade

    do_upgrade(revision=revision)
    with get_engine().connect() as conn:
        now_at = found(conn)
    click.echo(f"database at {_safe_url(get_settings().database_url)} is at revision {now_at}")


@db.command()
def current() -> None:
    """Show the schema's revision (or say there is none yet)."""
    from nofx.config import get_settings
    from nofx.db.engine import get_engine
    from nofx.db.migrate import head, revision

    url = get_settings().database_url
    found = None
    if not _sqlite_file_missing(url):
        with get_engine(url).connect() as conn:
            found = revision(conn)
    if found is None:
        click.echo(f"database at {_safe_url(url)} has no NOFX schema yet: run `nofx db upgrade`")
    else:
        latest = " (head)" if found == head() else f" (this NOFX's head: {head()})"
        click.echo(f"database at {_safe_url(url)} is at revision {found}{latest}")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# -- runs ----------------------------------------------------------------------------------


@main.group()
@click.option("--api-url", envvar="NOFX_API_URL", help="API base URL [NOFX_API_URL, default "
              "http://NOFX_API_HOST:NOFX_API_PORT]. Token: NOFX_API_TOKEN.")
@click.pass_context
def runs(ctx: click.Context, api_url: str | None) -> None:
    """Submit plans and look at runs through the HTTP API."""
    from nofx.client import Client

    ctx.obj = Client(api_url)


def _call(fn: Any, *args: Any) -> Any:
    with _api_errors():
        return fn(*args)


@contextmanager
def _api_errors() -> Iterator[None]:
    """The API's errors, and failures to reach it, as one clear line (no traceback)."""
    import httpx

    from nofx.client import ApiError

    try:
        yield
    except ApiError as exc:
        detail = exc.body.get("errors") if isinstance(exc.body, dict) else None
        message = str(exc) + (f"\n{json.dumps(detail, indent=2)}" if detail else "")
        raise click.ClickException(message) from exc
    except httpx.TransportError as exc:
        try:
            where = f" at {exc.request.url.copy_with(path='/', query=None)}"
        except RuntimeError:
            where = ""
        raise click.ClickException(
            f"cannot reach the NOFX API{where} ({type(exc).__name__}: {exc}). Is it running "
            "(nofx dev, nofx api)? Point at it with `nofx runs --api-url URL ...` or "
            "NOFX_API_URL.") from exc
    except (click.ClickException, TimeoutError, BrokenPipeError):
        raise  # already clear; a wait's own deadline; a reader that stopped (`| head`)
    except Exception as exc:  # anything else: say what, not how
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


@runs.command()
@click.argument("plan_file", type=click.File("r"))
@click.option("--wait", is_flag=True, help="Show progress until the run ends; exit 0 if it "
              "succeeded, 1 if it did not, 2 if --timeout passed first.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
@click.option("--idempotency-key", help="Send as Idempotency-Key: resubmitting returns the same run.")
@click.pass_obj
def submit(client: Any, plan_file: Any, wait: bool, timeout: float | None,
           idempotency_key: str | None) -> None:
    """Submit PLAN_FILE (JSON: {"plan": {"goal", "steps"}}; "-" reads stdin)."""
    try:
        body = json.load(plan_file)
    except ValueError as exc:
        raise click.ClickException(f"{plan_file.name} is not valid JSON: {exc}") from exc
    run = _call(client.submit, body, idempotency_key)
    click.echo(f"run {run['id']} {run['status']} ({len(run['steps'])} steps)")
    if wait:
        sys.exit(watch(client, run["id"], timeout))


def watch(client: Any, run_id: str, timeout: float | None) -> int:
    """Print a run's events as they come, then its outcome and artifacts; 0 if it succeeded."""
    try:
        with _api_errors():
            for event in client.follow(run_id, timeout_s=timeout):
                click.echo(describe_event(event))
    except TimeoutError as exc:
        click.echo(str(exc), err=True)
        return 2
    run = _call(client.run, run_id)
    colour = "green" if run["status"] == "succeeded" else "red"
    click.secho(f"run {run_id} {run['status']}", fg=colour, bold=True)
    for artifact in run["artifacts"]:
        click.echo(f"  artifact {artifact['name']} ({artifact['size']} bytes): "
                   f"{client.base_url}{artifact['url']}")
    return 0 if run["status"] == "succeeded" else 1


def describe_event(event: dict[str, Any]) -> str:
    """One line for one event, for people."""
    p, kind = event.get("payload") or {}, event["type"]
    detail = {
        "step.started": lambda: f"attempt {p.get('attempt')}",
        "llm.usage": lambda: (f"{p.get('provider')}/{p.get('model')} in={p.get('input_tokens')} "
                              f"out={p.get('output_tokens')} ${p.get('cost_usd', 0):.6f}"),
        "artifact.created": lambda: f"{p.get('name')} {p.get('size')} bytes",
        "step.progress": lambda: " ".join(
            [f"{p.get('elapsed_s')}s"] + [f"{k}={v}" for k, v in p.items()
                                          if k not in ("attempt", "elapsed_s")]),
        "step.finished": lambda: f"{p.get('status')} in {p.get('duration_s')}s" + (
            f": {p['error']['message']}" if p.get("error") else ""),
        "step.retrying": lambda: f"attempt {p.get('attempt')} failed, retry in {p.get('delay_s')}s",
        "step.reaped": lambda: f"{p.get('reason')} -> {p.get('action')}",
        "run.finished": lambda: str(p.get("status")),
    }.get(kind, lambda: "")()
    step = f" [{event['step_id'][:8]}]" if event.get("step_id") else ""
    return printable(f"  {event['created_at'][11:23]} {kind}{step} {detail}".rstrip())


def printable(text: str) -> str:
    """``text`` with control characters escaped: what a run carries (its goal, an error's
    message) is anyone's input, and must not forge lines or drive the operator's terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@runs.command()
@click.argument("run_id")
@click.pass_obj
def show(client: Any, run_id: str) -> None:
    """Print a run (with steps and artifacts) as JSON."""
    click.echo(json.dumps(_call(client.run, run_id), indent=2))


@runs.command()
@click.argument("run_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing events until the run ends.")
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")
@click.pass_obj
def events(client: Any, run_id: str, follow: bool, as_json: bool) -> None:
    """Print a run's events."""
    def _print() -> None:
        for event in client.follow(run_id) if follow else client.history(run_id):
            click.echo(json.dumps(event) if as_json else describe_event(event))

    _call(_print)


@runs.command(name="list")
@click.option("--status", type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]))
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1),
              help="How many runs to show (fetched page after page).")
@click.pass_obj
def list_(client: Any, status: str | None, limit: int) -> None:
    """List recent runs, newest first."""

    def _print() -> None:
        for run in client.recent_runs(status, limit):
            click.echo(f"{run['id']}  {run['status']:<10} {run['created_at'][:19]}  "
                       f"{printable(run['goal'][:60])}")

    _call(_print)


@runs.command()
@click.argument("run_id")
@click.pass_obj
def cancel(client: Any, run_id: str) -> None:
    """Cancel a queued or running run."""
    click.echo(f"run {run_id} {_call(client.cancel, run_id)['status']}")


@runs.command()
@click.argument("run_id")
@click.option("--wait", is_flag=True, help="Show progress until the run ends; exit 0 if it "
              "succeeded, 1 if it did not.")
@click.pass_obj
def retry(client: Any, run_id: str, wait: bool) -> None:
    """Resume a failed or cancelled run from its first unsuccessful step."""
    click.echo(f"run {run_id} {_call(client.retry, run_id)['status']}")
    if wait:
        sys.exit(watch(client, run_id, None))


if __name__ == "__main__":
    main()
