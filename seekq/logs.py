"""Process-wide logging: one line per record, with the job id when a record has one."""

import logging


def configure(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
    )
    # Third-party chatter at INFO adds nothing an operator needs.
    # Celery's per-task "received"/"succeeded" lines repeat seekq's own job lines (which
    # carry the job id) and cost ~1 ms per task on a solo worker.
    quiet = ("celery.app.trace", "celery.worker.strategy")
    for noisy in ("httpx", "urllib3", "filelock", "transformers", *quiet):
        logging.getLogger(noisy).setLevel(logging.WARNING)
