"""Celery settings for NOFX, derived from NOFX's own settings (``nofx/config.py``).

Loaded by ``nofx.worker`` with ``app.config_from_object``. Reliability here rests on:
acks late + reject on worker lost + prefetch 1 (a task is acknowledged only once it ran,
and a worker holds one at a time); a visibility timeout above the longest hard limit (Redis
does not hand a running task to a second worker); and NOFX's reaper, not the broker, for
recovering from dead workers (see docs/reliability.md).
"""

from nofx.config import get_settings

_settings = get_settings()

#: Longest hard time limit a step may ask for (``timeout_s`` in a plan).
MAX_STEP_TIMEOUT_S = 86_400

broker_url = _settings.broker_url
broker_connection_retry_on_startup = True
broker_connection_timeout = 3
broker_heartbeat = 10
_visibility = {"visibility_timeout": MAX_STEP_TIMEOUT_S + 3600}
if _settings.is_embedded_broker:
    _folder, _control = _settings.broker_dir / "queue", _settings.broker_dir / "control"
    for _path in (_folder, _control):
        _path.mkdir(parents=True, exist_ok=True)  # the transport expects them to exist
    broker_transport_options = {
        "data_folder_in": str(_folder),
        "data_folder_out": str(_folder),
        "control_folder": str(_control),
        "polling_interval": 0.1,
    }
else:
    broker_transport_options = dict(_visibility)
# NOFX keeps no state in Celery's result backend: Postgres is the source of truth.
result_backend = None
task_ignore_result = True
result_backend_transport_options = dict(_visibility)

task_serializer = "json"
accept_content = ["json"]
task_default_queue = _settings.queue
task_create_missing_queues = True

task_acks_late = True
task_reject_on_worker_lost = True
# A failed or hard-timed-out step is acked: its status is in the database and the reaper
# decides what happens next, not a broker redelivery.
task_acks_on_failure = True
task_acks_on_timeout = True
worker_prefetch_multiplier = 1
# Per-step limits travel with each message; these bound anything else.
task_time_limit = MAX_STEP_TIMEOUT_S
task_soft_time_limit = MAX_STEP_TIMEOUT_S - 60

# Flower and `celery events` see every task, named and with its run, step and tool.
worker_send_task_events = True
task_send_sent_event = True

worker_hijack_root_logger = False
worker_redirect_stdouts = False
# With REMAP_SIGTERM=SIGQUIT (the deploy files set it) SIGTERM is a soft shutdown: running
# steps get this long, then their messages go back to the broker and the reaper recovers
# them. Without it SIGTERM is a warm shutdown, which waits for running steps however long.
# 90 s: a step waiting on Claude (a typical answer of a few thousand tokens) and storing its
# answer finishes rather than being stopped and redone, its call paid twice, at every
# rollout. A longer answer is still stopped; its step runs again elsewhere.
worker_soft_shutdown_timeout = 90
# An idle worker stops at once (Celery would otherwise sleep the whole timeout).
worker_enable_soft_shutdown_on_idle = False

# Beat runs the reaper's ticks itself rather than sending them to the workers, where they
# would wait behind long steps whenever every worker process is busy (nofx/worker/beat.py).
beat_scheduler = "nofx.worker.beat:Scheduler"
beat_schedule = {
    "nofx-reap": {"task": "nofx.reap", "schedule": _settings.reap_every_s,
                  "options": {"expires": max(_settings.reap_every_s * 2, 5)}},
}
beat_schedule_filename = str(_settings.data_dir / "celerybeat-schedule")
