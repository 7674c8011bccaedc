"""Real parts to break: a redis-server of the suite's own, a loopback TCP proxy in front
of Redis and of PostgreSQL, worker processes to kill, and the checker that reads the
whole history back from SQL after every scenario."""

import contextlib
import signal
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text

from seekq.embedded import free_port


class TcpProxy:
    """Forwards 127.0.0.1:port to a target, until told to stall, refuse or reset.

    Modes: `pass`; `blackhole` (connections stay open but no byte moves: a stalled peer
    or a dropped route); `refuse` (every new connection is reset at once: the service is
    down). `reset()` resets every open connection (a restart or a middlebox timing out);
    `sever()` makes every open connection half-open for good (a NAT or firewall that
    forgot them: no byte and no reset ever arrives) while new ones work.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "pass"
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._kept: list[tuple[socket.socket, socket.socket]] = []
        self._severed: set[int] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="proxy").start()

    def sever(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
            self._severed.update(id(sock) for pair in pairs for sock in pair)
            self._kept.extend(pairs)  # never closed: closing would tell the peer

    def reset(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _rst(sock)

    def close(self) -> None:
        self._closed = True
        self.reset()
        for pair in self._kept:
            for sock in pair:
                _rst(sock)
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == "refuse":
                _rst(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
                upstream.settimeout(None)
            except OSError:
                _rst(client)
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while (self.mode == "blackhole" or id(src) in self._severed) and not self._closed:
                    time.sleep(0.02)
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):  # one side ended: end the other (a reset stays a reset)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)


def _rst(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed or restarted peer would. The
    shutdown first wakes a pump thread blocked in recv on it: while a syscall holds the
    socket, close() alone would release nothing and send nothing."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


class RedisServer:
    """A redis-server process of the suite's own, restartable on the same port."""

    def __init__(self, directory: Path, persistent: bool) -> None:
        self.directory = directory
        self.port = free_port()
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def start(self) -> "RedisServer":
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.directory), "--save", ""]
        if self.persistent:  # every write on disk before the reply, like a durable broker
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return self
            except redis.RedisError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.process.wait(timeout=10)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)


@dataclass
class History:
    """What the clients were told: accepted job ids (2xx), refused submits (5xx/429)."""

    accepted: dict[str, str | None] = field(default_factory=dict)  # id -> a ping's payload
    refused: int = 0
    # Kinds whose jobs the clients never see ids of (a synchronous search answers hits).
    untracked_kinds: set[str] = field(default_factory=set)

    def accept(self, job: dict[str, Any], payload: str | None) -> None:
        self.accepted[job["id"]] = payload


@dataclass
class Verdict:
    jobs: int
    statuses: dict[str, int]
    max_attempts: int
    effects: int
    problems: list[str]

    def row(self) -> str:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
        effects = f"{self.effects} effects; max attempt {self.max_attempts}"
        return f"{self.jobs} jobs ({statuses}); {effects}"


TERMINAL = {"succeeded", "failed", "cancelled"}


class Checker:
    """Reads SQL directly (never through a proxy) and holds the history to its rules:

    - every accepted job reaches a terminal status;
    - it has exactly one committed effect: one terminal event in the webhook outbox,
      written in the same transaction as its terminal status, and of the same status;
    - a succeeded ping's result is its own payload;
    - no job exists that no client was told about, except those the caller was refused
      (503), which end failed `broker_unavailable` and never ran.
    """

    def __init__(self, database_url: str, tenant_id: str) -> None:
        self.engine = create_engine(database_url)
        self.tenant_id = tenant_id

    def wait_terminal(self, job_ids: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            left = [j for j, s in self.statuses(job_ids).items() if s not in TERMINAL]
            if not left or time.monotonic() > deadline:
                return
            time.sleep(0.2)

    def statuses(self, job_ids: list[str]) -> dict[str, str]:
        rows = self._jobs()
        return {j: rows[j]["status"] if j in rows else "missing" for j in job_ids}

    def verdict(self, history: History) -> Verdict:
        rows = self._jobs()
        effects = self._effects()
        problems = []
        for job_id, payload in history.accepted.items():
            problems += _check_job(job_id, payload, rows.get(job_id), effects[job_id])
        for job_id, row in rows.items():
            if job_id in history.accepted or row["kind"] in history.untracked_kinds:
                continue
            if row["error_type"] != "broker_unavailable":
                problems.append(f"{job_id}: a job no client was told about ({row['status']})")
        ours = [rows[j] for j in history.accepted if j in rows]
        return Verdict(
            jobs=len(history.accepted),
            statuses=dict(Counter(r["status"] for r in ours)),
            max_attempts=max((r["attempt"] for r in ours), default=0),
            effects=sum(effects[j].total() for j in history.accepted),
            problems=problems,
        )

    def _jobs(self) -> dict[str, dict[str, Any]]:
        query = text(
            "SELECT id, kind, status, attempt, result, error_type FROM jobs "
            "WHERE tenant_id = :t AND parent_id IS NULL"
        )
        with self.engine.connect() as connection:
            found = connection.execute(query, {"t": self.tenant_id}).mappings()
            return {row["id"]: dict(row) for row in found}

    def _effects(self) -> dict[str, Counter[str]]:
        query = text("SELECT event_type, payload FROM webhook_deliveries WHERE tenant_id = :t")
        effects: dict[str, Counter[str]] = {}
        with self.engine.connect() as connection:
            for event_type, payload in connection.execute(query, {"t": self.tenant_id}):
                job_id = _payload(payload)["data"]["id"]
                effects.setdefault(job_id, Counter())[event_type.removeprefix("job.")] += 1
        return _defaulting(effects)

    def close(self) -> None:
        self.engine.dispose()


def _check_job(
    job_id: str, payload: str | None, row: dict[str, Any] | None, effects: Counter[str]
) -> list[str]:
    if row is None:
        return [f"{job_id}: accepted but not in SQL (lost)"]
    status = row["status"]
    if status not in TERMINAL:
        return [f"{job_id}: never finished ({status}, attempt {row['attempt']})"]
    problems = []
    if effects.total() != 1:
        problems.append(f"{job_id}: {effects.total()} committed effects {dict(effects)}")
    elif status not in effects:
        problems.append(f"{job_id}: status {status} but its effect says {dict(effects)}")
    result = _payload(row["result"]) or {}
    if status == "succeeded" and payload is not None and result.get("payload") != payload:
        problems.append(f"{job_id}: succeeded with someone else's result")
    return problems


def _payload(value: Any) -> Any:
    import json

    return json.loads(value) if isinstance(value, str) else value


def _defaulting(effects: dict[str, Counter[str]]) -> Any:
    class Effects(dict[str, Counter[str]]):
        def __missing__(self, key: str) -> Counter[str]:
            return Counter()

    return Effects(effects)


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """Seconds the block took, in the yielded list once it ends."""
    out: list[float] = []
    started = time.monotonic()
    yield out
    out.append(time.monotonic() - started)
