"""`seekq worker --gpus`: a supervisor that starts one pinned worker per GPU, restarts one
that dies, and drains them all on SIGTERM.

No GPU here, so a stand-in `nvidia-smi` (first on PATH) lists two; everything else is
real: the supervisor and its workers are processes, the workers consume `cpu.ping` (no
GPU needed) from a real Redis and record jobs in a real SQLite database.
"""

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.context import JobsContext
from jobs.errors import ConfigError
from seekq.gpu_workers import (
    Child,
    GpuDevice,
    GpuSupervisor,
    _child,
    list_gpus,
    visible_gpus,
    worker_groups,
)
from seekq.worker_command import _pin_gpu, node_name
from storage.migrate import upgrade
from tests.conftest import (
    REDIS_DB_BASE,
    flush_redis,
    make_context,
    stack_env,
    unique,
)
from workers.app import READY_MESSAGE

# The quiet contexts' broker: no session worker consumes it, and this test's workers are
# gone (and the database flushed) before another test uses it.
REDIS_DB = REDIS_DB_BASE + 2
QUERY = "--query-gpu=index,name,memory.total,memory.used"
TWO_GPUS = ["0, NVIDIA H200, 143771, 1024", "1, NVIDIA H200, 143771, 0"]
FOUR = [GpuDevice(i, "H200", 143771, 0) for i in range(4)]


def fake_nvidia_smi(bin_dir: Path, lines: list[str]) -> Path:
    """An `nvidia-smi` that answers seekq's query with `lines` (and fails any other)."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "nvidia-smi"
    quoted = " ".join(f"'{line}'" for line in lines)
    script.write_text(f'#!/bin/sh\n[ "$1" = "{QUERY}" ] || exit 9\nprintf \'%s\\n\' {quoted}\n')
    script.chmod(0o755)
    return bin_dir


def test_gpus_are_listed_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(fake_nvidia_smi(tmp_path / "bin", TWO_GPUS)))
    assert list_gpus() == [
        GpuDevice(0, "NVIDIA H200", 143771, 1024),
        GpuDevice(1, "NVIDIA H200", 143771, 0),
    ]


def test_no_nvidia_smi_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no NVIDIA GPU found \(nvidia-smi not on PATH\)"):
        list_gpus()  # this machine has none
    env = {**os.environ, "PATH": str(tmp_path)}
    cli = subprocess.run(
        [sys.executable, "-m", "seekq", "worker", "--gpus", "all"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 2
    assert "no NVIDIA GPU found (nvidia-smi not on PATH)" in cli.stdout
    assert "Traceback" not in cli.stdout + cli.stderr


def test_cuda_visible_devices_is_the_visible_set() -> None:
    assert visible_gpus(FOUR, None) == [0, 1, 2, 3]
    assert visible_gpus(FOUR, "3,1") == [3, 1]
    for refused in ("GPU-5f3a", "7", "", "-1"):
        with pytest.raises(ConfigError):
            visible_gpus(FOUR, refused)


def test_devices_are_grouped_per_worker() -> None:
    assert worker_groups([0, 1, 2, 3], None, 1) == [[0], [1], [2], [3]]
    assert worker_groups([0, 1, 2, 3], None, 2) == [[0, 1], [2, 3]]
    assert worker_groups([2, 3], [3], 1) == [[3]]
    with pytest.raises(ConfigError, match="not visible"):
        worker_groups([2, 3], [0, 2], 1)
    with pytest.raises(ConfigError, match="do not split"):
        worker_groups([0, 1, 2], None, 2)


def test_each_worker_gets_its_devices_and_its_own_metrics_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SEEKQ_METRICS_PORT", "9400")
    child = _child([2, 3], ["--queues", "gpu.generate"])
    assert child.command[1:] == [
        "-m",
        "seekq",
        "worker",
        "--gpu",
        "2,3",
        "--queues",
        "gpu.generate",
    ]
    assert child.env["SEEKQ_METRICS_PORT"] == "9402"


def python_child(code: str) -> Child:
    return Child([0], [sys.executable, "-c", code], dict(os.environ))


def test_a_worker_that_keeps_dying_ends_the_supervisor(caplog: pytest.LogCaptureFixture) -> None:
    supervisor = GpuSupervisor([python_child("exit(3)")], 5, max_restarts=3, backoff_s=0.01)
    assert supervisor.run() == 1
    assert caplog.text.count("worker on GPU 0 exited with code 3") == 4
    assert "died 3 times within a minute: giving up" in caplog.text


def test_a_worker_refusing_its_options_is_not_restarted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    supervisor = GpuSupervisor([python_child("exit(2)")], 5, backoff_s=0.01)
    assert supervisor.run() == 2
    assert caplog.text.count("started (pid") == 1
    assert "refused its options: not restarted" in caplog.text


def test_a_worker_past_the_drain_timeout_is_killed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ready = tmp_path / "ready"
    stubborn = python_child(
        "import pathlib, signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(120)\n"
    )
    supervisor = GpuSupervisor([stubborn], drain_timeout_s=0.5)
    threading.Thread(target=stop_when, args=(ready, supervisor), daemon=True).start()
    started = time.monotonic()
    assert supervisor.run() == 1
    assert time.monotonic() - started < 30
    assert "worker on GPU 0 did not drain: killed" in caplog.text


def test_a_second_signal_kills_the_workers_at_once(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    stubborn = python_child(
        "import pathlib, signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(120)\n"
    )
    supervisor = GpuSupervisor([stubborn], drain_timeout_s=120)
    threading.Thread(target=stop_when, args=(ready, supervisor, 2), daemon=True).start()
    started = time.monotonic()
    assert supervisor.run() == 1
    assert time.monotonic() - started < 30


def stop_when(ready: Path, supervisor: GpuSupervisor, times: int = 1) -> None:
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    for _ in range(times):
        time.sleep(0.3)
        supervisor.stop()


def test_gpus_refuses_options_that_cannot_work() -> None:
    for args, said in [
        (("--gpus", "all", "--gpu", "0"), "drop --gpu/--name"),
        (("--gpus", "all", "--pool", "prefork"), "CUDA-safe"),
        (("--gpus", "0,0"), "names a device twice"),
        (("--gpu", "0,x"), "device indices"),
    ]:
        cli = subprocess.run(
            [sys.executable, "-m", "seekq", "worker", "--queues", "cpu.ping", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 2 and said in cli.stdout + cli.stderr, (args, cli.stderr)


def test_a_worker_can_be_pinned_to_several_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SEEKQ_DEVICE", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    assert _pin_gpu("2,3", "threads") == [2, 3]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert node_name([2, 3], ["gpu.generate"]) == "seekq-gpu2+3-gpu.generate@%h"
    assert node_name(1, ["gpu.embed"]) == "seekq-gpu1-gpu.embed@%h"


# --- the real thing: `seekq worker --gpus all` with two workers ---------------------------


class Supervisor:
    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.log_path = log_path
        command = [sys.executable, "-m", "seekq", "worker", "--queues", "cpu.ping", *args]
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, count: int = 1, timeout_s: float = 120) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while len(found := re.findall(pattern, self.log())) < count:
            assert self.process.poll() is None, self.log()[-4000:]
            assert time.monotonic() < deadline, self.log()[-4000:]
            time.sleep(0.2)
        return found

    def stop(self) -> None:
        """A second signal tells the supervisor to kill its workers at once."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def gpu_stack(tmp_path: Path) -> Iterator[tuple[dict[str, str], JobsContext]]:
    url = f"sqlite:///{tmp_path / 'seekq.db'}"
    upgrade(url)
    flush_redis(REDIS_DB)
    path = f"{fake_nvidia_smi(tmp_path / 'bin', TWO_GPUS)}:{os.environ['PATH']}"
    env = stack_env(url, REDIS_DB, tmp_path, PATH=path)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    context = make_context(url, REDIS_DB, tmp_path)
    yield env, context
    context.close()
    flush_redis(REDIS_DB)


def test_gpus_all_runs_one_pinned_worker_per_gpu_and_drains_on_sigterm(
    gpu_stack: tuple[dict[str, str], JobsContext], tmp_path: Path
) -> None:
    env, context = gpu_stack
    supervisor = Supervisor(env, tmp_path / "supervisor.log", "--gpus", "all")
    try:
        supervisor.wait_for(READY_MESSAGE, count=2)
        log = supervisor.log()
        for gpu in (0, 1):
            assert f"pinned to GPU {gpu} (CUDA_VISIBLE_DEVICES={gpu})" in log
        names = {name for reply in context.celery.control.ping(timeout=5) for name in reply}
        assert {name.split("@")[0] for name in names} == {
            "seekq-gpu0-cpu.ping",
            "seekq-gpu1-cpu.ping",
        }

        killed = restart_one(supervisor)
        assert f"worker on GPU 1 exited with code -{signal.SIGKILL.value}" in supervisor.log()
        assert supervisor.wait_for(r"worker on GPU 1 started \(pid (\d+)\)", 2)[1] != killed

        who = context.keys.authenticate(context.keys.create(unique("gpus")).secret)
        held = context.service.submit(who, "ping", {"payload": "held", "hold_s": 4}).job.id
        wait_status(context, who, held, "running")
        supervisor.process.send_signal(signal.SIGTERM)
        assert supervisor.process.wait(timeout=90) == 0, supervisor.log()[-4000:]
        job = context.service.get(who, held)
        assert job.status == "succeeded" and job.result == {"payload": "held"}
        assert "all workers drained" in supervisor.log()
    finally:
        supervisor.stop()


def restart_one(supervisor: Supervisor) -> str:
    """Kill GPU 1's worker with SIGKILL and wait for its replacement to be ready."""
    pid = supervisor.wait_for(r"worker on GPU 1 started \(pid (\d+)\)")[0]
    os.kill(int(pid), signal.SIGKILL)
    supervisor.wait_for(r"worker on GPU 1 exited with code")
    supervisor.wait_for(READY_MESSAGE, count=3)
    return pid


def wait_status(context: JobsContext, who: object, job_id: str, status: str) -> None:
    deadline = time.monotonic() + 60
    while context.service.get(who, job_id).status != status:  # type: ignore[arg-type]
        assert time.monotonic() < deadline, f"job {job_id} never {status}"
        time.sleep(0.1)


def test_per_worker_gives_each_worker_a_group_of_gpus(
    gpu_stack: tuple[dict[str, str], JobsContext], tmp_path: Path
) -> None:
    env, context = gpu_stack
    four = [f"{i}, NVIDIA H200, 143771, 0" for i in range(4)]
    env["PATH"] = f"{fake_nvidia_smi(tmp_path / 'bin4', four)}:{env['PATH']}"
    env["CUDA_VISIBLE_DEVICES"] = "3,2,1,0"  # honoured as given: groups 3,2 and 1,0
    args = ("--gpus", "all", "--per-worker", "2")
    supervisor = Supervisor(env, tmp_path / "supervisor.log", *args)
    try:
        supervisor.wait_for(READY_MESSAGE, count=2)
        assert "pinned to GPU 3,2 (CUDA_VISIBLE_DEVICES=3,2)" in supervisor.log()
        assert "pinned to GPU 1,0 (CUDA_VISIBLE_DEVICES=1,0)" in supervisor.log()
        names = {name for reply in context.celery.control.ping(timeout=5) for name in reply}
        assert {name.split("@")[0] for name in names} == {
            "seekq-gpu3+2-cpu.ping",
            "seekq-gpu1+0-cpu.ping",
        }
        supervisor.process.send_signal(signal.SIGTERM)
        assert supervisor.process.wait(timeout=90) == 0, supervisor.log()[-4000:]
    finally:
        supervisor.stop()
