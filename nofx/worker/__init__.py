"""The Celery app: ``celery -A nofx.worker worker|beat|flower|inspect ...``."""

from nofx.worker.app import app

celery = app

__all__ = ["app", "celery"]
