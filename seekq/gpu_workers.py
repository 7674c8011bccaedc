"""`seekq worker --gpus all`: one pinned worker process per GPU, under a supervisor.

The supervisor never imports torch, so no CUDA context exists before a worker starts: it
lists the devices with `nvidia-smi` and starts each worker as a fresh process
(`python -m seekq worker --gpu N ...`, never a fork), which pins itself before anything
loads torch. `--per-worker 2` gives each worker two devices (`--gpu 0,1`) for a model that
spreads over several with `device_map: "auto"`.

Device indices are nvidia-smi's (PCI bus order; the workers set CUDA_DEVICE_ORDER to
match). A CUDA_VISIBLE_DEVICES already set is the set of devices the supervisor may use.

Draining: SIGTERM or SIGINT to the supervisor is sent on to every worker as SIGTERM
(Celery's warm shutdown: running jobs finish, no new ones start); workers still running
after the drain timeout are killed, as they are at a second signal. A worker that dies
on its own is logged with its exit code and restarted after a backoff; one that dies
`max_restarts` times within a minute, or refuses its options (exit code 2), ends the
supervisor with a non-zero exit code.
"""

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from jobs.errors import ConfigError
from seekq import logs
from seekq.worker_command import parse_devices

log = logging.getLogger(__name__)

QUERY = ["--query-gpu=index,name,memory.total,memory.used", "--format=csv,noheader,nounits"]
USAGE_EXIT_CODE = 2  # Typer's answer to options it refuses: restarting cannot help
POLL_S = 0.2


@dataclass(frozen=True)
class GpuDevice:
    index: int
    name: str
    memory_total_mib: int
    memory_used_mib: int


def list_gpus(nvidia_smi: str = "nvidia-smi") -> list[GpuDevice]:
    """The machine's NVIDIA GPUs as `nvidia_smi` (a command name or path) lists them."""
    path = shutil.which(nvidia_smi)
    if path is None:
        raise ConfigError(f"no NVIDIA GPU found ({nvidia_smi} not on PATH)")
    answer = subprocess.run([path, *QUERY], capture_output=True, text=True, timeout=60)
    if answer.returncode != 0:
        said = (answer.stderr or answer.stdout).strip()
        raise ConfigError(f"no NVIDIA GPU found ({nvidia_smi} failed: {said})")
    devices = [_parse_line(line) for line in answer.stdout.splitlines() if line.strip()]
    if not devices:
        raise ConfigError(f"no NVIDIA GPU found ({nvidia_smi} lists none)")
    return devices


def _parse_line(line: str) -> GpuDevice:
    index, name, total, used = (part.strip() for part in line.split(","))
    return GpuDevice(int(index), name, int(total), int(used))


def visible_gpus(devices: list[GpuDevice], cuda_visible: str | None) -> list[int]:
    """The indices of `devices` this process may use: those CUDA_VISIBLE_DEVICES names,
    when set, else all."""
    indices = [device.index for device in devices]
    if cuda_visible is None:
        return indices
    try:
        named = [int(part) for part in cuda_visible.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(
            f"CUDA_VISIBLE_DEVICES={cuda_visible}: --gpus needs device indices, not UUIDs"
        ) from None
    missing = sorted(set(named) - set(indices))
    if not named or missing or min(named) < 0:
        raise ConfigError(f"no usable GPU in CUDA_VISIBLE_DEVICES={cuda_visible}")
    return named


def worker_groups(visible: list[int], wanted: list[int] | None, per_worker: int) -> list[list[int]]:
    """The devices of each worker: those `wanted` (None: all visible), `per_worker` each."""
    chosen = visible if wanted is None else wanted
    hidden = sorted(set(chosen) - set(visible))
    if hidden:
        raise ConfigError(f"GPUs {hidden} are not visible here (visible: {visible})")
    if per_worker < 1 or len(chosen) % per_worker:
        raise ConfigError(f"{len(chosen)} GPUs do not split into workers of {per_worker}")
    return [chosen[i : i + per_worker] for i in range(0, len(chosen), per_worker)]


@dataclass
class Child:
    """One worker process the supervisor keeps running."""

    devices: list[int]
    command: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: deque[float] = field(default_factory=deque)  # monotonic times, last minute
    start_at: float = 0.0  # monotonic time of the next start, while it is down

    @property
    def label(self) -> str:
        return f"worker on GPU {','.join(map(str, self.devices))}"

    def start(self) -> None:
        # Its own process group: a Ctrl-C in the terminal reaches the supervisor only,
        # which drains the workers in order.
        self.process = subprocess.Popen(self.command, env=self.env, process_group=0)
        log.info("%s started (pid %d)", self.label, self.process.pid)

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)


class GpuSupervisor:
    def __init__(
        self,
        children: list[Child],
        drain_timeout_s: float,
        *,
        max_restarts: int = 5,
        backoff_s: float = 1.0,
    ) -> None:
        self.children = children
        self.drain_timeout_s = drain_timeout_s
        self.max_restarts = max_restarts
        self.backoff_s = backoff_s
        self._stopping = threading.Event()
        self._killing = threading.Event()

    def stop(self) -> None:
        """Drain: the first call asks every worker to finish; a second kills them."""
        (self._killing if self._stopping.is_set() else self._stopping).set()

    def run(self) -> int:
        """Keep every worker up until `stop`; the exit code: 0 when all drained."""
        for child in self.children:
            child.start()
        exit_code = 0
        while not self._stopping.wait(POLL_S) and not exit_code:
            exit_code = self._watch()
        return self._drain() or exit_code

    def _watch(self) -> int:
        for child in self.children:
            code = self._tend(child)
            if code:
                return code
        return 0

    def _tend(self, child: Child) -> int:
        """Restart `child` when it is down and its backoff is over; an exit code when the
        supervisor should give up on it."""
        assert child.process is not None
        if child.start_at and time.monotonic() >= child.start_at:
            child.start_at = 0.0
            child.start()
            return 0
        code = child.process.poll()
        if code is None or child.start_at:
            return 0
        log.error("%s exited with code %d", child.label, code)
        if code == USAGE_EXIT_CODE:
            log.error("%s refused its options: not restarted", child.label)
            return USAGE_EXIT_CODE
        return self._schedule_restart(child)

    def _schedule_restart(self, child: Child) -> int:
        now = time.monotonic()
        while child.restarts and now - child.restarts[0] > 60:
            child.restarts.popleft()
        if len(child.restarts) >= self.max_restarts:
            log.error("%s died %d times within a minute: giving up", child.label, self.max_restarts)
            return 1
        delay_s = min(30.0, self.backoff_s * 2 ** len(child.restarts))
        child.restarts.append(now)
        child.start_at = now + delay_s
        log.warning("%s restarts in %.1f s", child.label, delay_s)
        return 0

    def _drain(self) -> int:
        """SIGTERM every running worker, wait for them, kill those past the timeout."""
        running = [c for c in self.children if c.process and c.process.poll() is None]
        log.info("draining %d workers (up to %.0f s)", len(running), self.drain_timeout_s)
        for child in running:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.drain_timeout_s
        while any(c.process and c.process.poll() is None for c in running):
            if time.monotonic() > deadline or self._killing.is_set():
                return self._kill([c for c in running if c.process and c.process.poll() is None])
            time.sleep(POLL_S)
        log.info("all workers drained")
        return 0

    def _kill(self, stragglers: list[Child]) -> int:
        for child in stragglers:
            log.error("%s did not drain: killed", child.label)
            child.signal(signal.SIGKILL)
            if child.process is not None:
                child.process.wait()
        return 1


def run_gpu_workers(
    gpus: str, per_worker: int, drain_timeout_s: float, worker_args: list[str], log_level: str
) -> int:
    """Start one worker per group of devices (each given `worker_args`), keep them up until
    SIGTERM or SIGINT, drain them; the supervisor's exit code."""
    logs.configure(log_level)
    wanted = None if gpus.strip() == "all" else parse_devices(gpus, "--gpus")
    devices = list_gpus()
    for device in devices:
        log.info(
            "GPU %d: %s, %d MiB (%d MiB in use)",
            device.index,
            device.name,
            device.memory_total_mib,
            device.memory_used_mib,
        )
    visible = visible_gpus(devices, os.environ.get("CUDA_VISIBLE_DEVICES"))
    groups = worker_groups(visible, wanted, per_worker)
    supervisor = GpuSupervisor([_child(group, worker_args) for group in groups], drain_timeout_s)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: supervisor.stop())
    return supervisor.run()


def _child(devices: list[int], worker_args: list[str]) -> Child:
    gpu = ",".join(map(str, devices))
    command = [sys.executable, "-m", "seekq", "worker", "--gpu", gpu, *worker_args]
    env = dict(os.environ)
    port = env.get("SEEKQ_METRICS_PORT")
    if port and int(port) > 0:  # 0: any free port, which cannot collide
        env["SEEKQ_METRICS_PORT"] = str(int(port) + devices[0])
    return Child(devices, command, env)
