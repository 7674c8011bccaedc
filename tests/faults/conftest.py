"""The fault stack: its own redis-server, PostgreSQL (the machine's, a fresh database),
a TCP proxy in front of each, a real gateway and real worker processes behind them."""

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from jobs.context import JobsContext
from jobs.keys import Principal
from jobs.settings import JobsSettings
from jobs.webhook_endpoints import EndpointCreate
from storage.migrate import upgrade
from storage.settings import StorageSettings
from tests.conftest import TEST_SECRET, WorkerProcess, _postgres_database, served, stack_env
from tests.faults.harness import Checker, History, RedisServer, TcpProxy

LEASE_S = 2.0
EVENTS = ["job.succeeded", "job.failed", "job.cancelled"]
REPORT = os.environ.get("SEEKQ_FAULTS_REPORT")  # a file: one line per scenario


@dataclass
class FaultStack:
    database_url: str  # direct, for the checker
    proxied_database_url: str
    redis: RedisServer
    redis_proxy: TcpProxy
    pg_proxy: TcpProxy
    context: JobsContext
    url: str
    tmp: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_proxy.port}/0"

    def worker_env(self, **extra: str) -> dict[str, str]:
        """The stack's worker environment, pointed at the proxies, with short leases and
        a sweep every second."""
        settings = {
            "SEEKQ_BROKER_URL": self.broker_url(),
            "SEEKQ_LEASE_S": str(LEASE_S),
            "SEEKQ_RECONCILE_EVERY_S": "1",
            "SEEKQ_DISPATCH_GRACE_S": "2",
            "SEEKQ_MAX_ATTEMPTS": "3",
        }
        env = {**settings, **extra}  # a scenario may override any of these
        return stack_env(self.proxied_database_url, 0, self.tmp / "data", **env)

    def start_worker(
        self, name: str = "w", *args: str, queues: str = "cpu.ping", **env: str
    ) -> WorkerProcess:
        log = self.tmp / f"worker-{name}.log"
        worker = WorkerProcess(self.worker_env(**env), log, queues=queues, extra_args=args)
        self.workers.append(worker.start())
        return worker

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()

    def tenant(self, name: str) -> tuple[httpx.Client, Checker, History]:
        """A fresh tenant per scenario, with the webhook endpoint whose outbox rows are
        the checker's ledger of committed effects."""
        secret = self.context.keys.create(name).secret
        who: Principal = self.context.keys.authenticate(secret)
        hook = EndpointCreate(name="ledger", url="http://127.0.0.1:9/ledger", event_types=EVENTS)
        self.context.webhooks.create(who, hook)
        headers = {"Authorization": f"Bearer {secret}"}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        return client, Checker(self.database_url, who.tenant_id), History()


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    tmp = tmp_path_factory.mktemp("faults")
    redis_server = RedisServer(tmp / "redis", persistent=True).start()
    redis_proxy = TcpProxy(redis_server.port)
    databases = _postgres_database()
    database_url = next(databases)
    upgrade(database_url)
    pg_proxy = TcpProxy(5432)
    proxied = database_url.replace("127.0.0.1:5432", f"127.0.0.1:{pg_proxy.port}")
    settings = JobsSettings(
        broker_url=f"redis://127.0.0.1:{redis_proxy.port}/0",
        secret_key=TEST_SECRET,
        webhook_allowed_networks=("127.0.0.0/8",),
        webhook_allow_http=True,
        reconcile_every_s=0,
    )
    storage = StorageSettings(database_url=proxied, data_dir=tmp / "data")
    context = JobsContext.create(settings, storage)
    with served(context, wait_timeout_s=20) as url:
        stack = FaultStack(
            database_url, proxied, redis_server, redis_proxy, pg_proxy, context, url, tmp
        )
        yield stack
        stack.stop_workers()
    context.close()
    redis_proxy.close()
    pg_proxy.close()
    redis_server.stop()
    next(databases, None)


def report(scenario: str, outcome: str) -> None:
    if REPORT:
        with open(REPORT, "a") as out:
            out.write(f"{scenario}\t{outcome}\n")
