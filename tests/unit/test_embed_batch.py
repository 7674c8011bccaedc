"""The embed collector and the grouping of collected jobs, without Celery, SQL or a model."""

import threading
import time

import pytest

from jobs.errors import RetryableError
from jobs.status import JobStatus
from workers.embed_batch import EmbedCollector, plan_groups
from workers.execution import Outcome


def test_plan_groups_shares_calls_by_key_up_to_the_text_limit() -> None:
    jobs = [("a", 1), ("a", 1), ("b", 1), ("a", 3), ("a", 1), ("b", 9), ("a", 2)]
    assert plan_groups(jobs, max_texts=4) == [[0, 1], [2], [3, 4], [6], [5]]


def test_plan_groups_keeps_arrival_order_and_one_group_per_key() -> None:
    jobs = [("m", 1)] * 5
    assert plan_groups(jobs, max_texts=128) == [[0, 1, 2, 3, 4]]
    assert plan_groups([], max_texts=8) == []


def collected_by(collector: EmbedCollector, job_ids: list[str]) -> dict[str, object]:
    """Each id run from its own thread, as Celery's task threads do; answer or exception."""
    answers: dict[str, object] = {}

    def call(job_id: str) -> None:
        try:
            answers[job_id] = collector.run(job_id)
        except Exception as exc:
            answers[job_id] = exc

    threads = [threading.Thread(target=call, args=(job_id,)) for job_id in job_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    return answers


def test_collector_serves_what_arrives_together_in_one_call() -> None:
    calls: list[list[str]] = []
    release = threading.Event()

    def serve(job_ids: list[str]) -> list[Outcome | Exception]:
        calls.append(job_ids)
        release.wait(5)  # the first batch runs while the others arrive
        return [Outcome(job_id, JobStatus.SUCCEEDED) for job_id in job_ids]

    collector = EmbedCollector(serve, max_jobs=8, collect_s=0.05)
    try:
        first = threading.Thread(target=collector.run, args=("first",))
        first.start()
        time.sleep(0.2)  # "first" is being served on its own
        later = [f"job-{i}" for i in range(20)]
        threading.Timer(0.3, release.set).start()
        answers = collected_by(collector, later)
        first.join(timeout=5)
    finally:
        collector.close()
    assert calls[0] == ["first"]
    assert sorted(j for call in calls[1:] for j in call) == sorted(later)
    assert max(len(call) for call in calls) == 8  # capped at max_jobs
    assert len(calls) == 1 + 3  # 20 waiting jobs: 8 + 8 + 4
    assert all(answers[j] == Outcome(j, JobStatus.SUCCEEDED) for j in later)


def test_each_task_gets_its_own_answer_or_exception() -> None:
    def serve(job_ids: list[str]) -> list[Outcome | Exception]:
        return [
            RetryableError("later") if job_id == "retry" else Outcome(job_id, None)
            for job_id in job_ids
        ]

    collector = EmbedCollector(serve, max_jobs=64, collect_s=0.02)
    try:
        answers = collected_by(collector, ["a", "retry", "b"])
    finally:
        collector.close()
    assert isinstance(answers["retry"], RetryableError)
    assert answers["a"] == Outcome("a", None) and answers["b"] == Outcome("b", None)


def test_a_failing_batch_reaches_every_waiting_task_and_the_collector_goes_on() -> None:
    failures = iter([True, False])

    def serve(job_ids: list[str]) -> list[Outcome | Exception]:
        if next(failures):
            raise ConnectionError("database down")
        return [Outcome(job_id, JobStatus.SUCCEEDED) for job_id in job_ids]

    collector = EmbedCollector(serve, max_jobs=64, collect_s=0.2)
    try:
        failed = collected_by(collector, ["a", "b"])
        served = collector.run("c")
    finally:
        collector.close()
    assert all(isinstance(answer, ConnectionError) for answer in failed.values())
    assert served == Outcome("c", JobStatus.SUCCEEDED)


def test_close_serves_what_has_arrived_first() -> None:
    def serve(job_ids: list[str]) -> list[Outcome | Exception]:
        time.sleep(0.1)
        return [Outcome(job_id, None) for job_id in job_ids]

    collector = EmbedCollector(serve, max_jobs=64, collect_s=0.0)
    waiting = threading.Thread(target=collector.run, args=("x",))
    waiting.start()
    time.sleep(0.02)
    collector.close()
    waiting.join(timeout=5)
    assert not waiting.is_alive()
    with pytest.raises(RuntimeError):
        collector.run("after close")
