"""Celery workers: thin tasks over runners, the model pool, backends."""
