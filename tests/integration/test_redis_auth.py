"""seekq on a Redis that wants a password, and on one that speaks only TLS (with client
certificates): real redis-server processes started here on free ports, a real worker
process, and every Redis client seekq makes (Celery producer and worker, job events,
token streams, the reconciler's lock, the gateway's rate limiter and Flower)."""

import asyncio
import datetime
import ipaddress
import secrets
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from api_gateway import streaming
from api_gateway.app import create_app
from api_gateway.rate_limit import KeyRateLimiter
from api_gateway.settings import GatewaySettings
from jobs.broker import broker_tls
from jobs.catalog import JobKind, get_entry
from jobs.context import JobsContext
from jobs.errors import BrokerUnavailableError
from jobs.queue import CeleryPublisher
from jobs.reconciler import LOCK_KEY, ReconcilerThread
from jobs.settings import JobsSettings
from seekq.embedded import free_port
from seekq.flower_command import flower_celery
from storage.settings import StorageSettings
from tests.conftest import TEST_SECRET, Stack, WorkerProcess, stack_env

PASSWORD = "pw-" + secrets.token_hex(12)
ACL_USER, ACL_PASSWORD = "seekq", "acl-" + secrets.token_hex(12)
START_TIMEOUT_S = 15


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_redis(tmp: Path, name: str, *args: str) -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    log_path = tmp / f"{name}.log"
    tls = "--tls-cert-file" in args
    ports = ["--port", "0", "--tls-port", str(port)] if tls else ["--port", str(port)]
    command = [binary, *ports, "--requirepass", PASSWORD, "--save", "", "--appendonly", "no"]
    with log_path.open("wb") as log:
        process = subprocess.Popen([*command, *args], stdout=log, stderr=log, cwd=tmp)
    server = RedisServer(port, process, log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while "Ready to accept connections" not in log_path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            pytest.fail(f"redis-server did not start:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.05)
    return server


@pytest.fixture(scope="module")
def password_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis-auth"), "redis")
    admin = redis.Redis(port=server.port, password=PASSWORD)
    admin.acl_setuser(
        ACL_USER,
        enabled=True,
        passwords=[f"+{ACL_PASSWORD}"],
        keys=["*"],
        channels=["*"],
        commands=["+@all"],
    )
    admin.close()
    yield server
    server.stop()


@dataclass
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    folder = tmp_path_factory.mktemp("tls")
    ca = _certificate("seekq test CA")
    paths = Certificates(*(folder / n for n in ("ca.pem", "s.pem", "s.key", "c.pem", "c.key")))
    _write(ca[1], paths.ca)
    server_key, server_cert = _certificate("127.0.0.1", ca)
    _write(server_cert, paths.server_cert, server_key, paths.server_key)
    client_key, client_cert = _certificate("worker", ca)
    _write(client_cert, paths.client_cert, client_key, paths.client_key)
    return paths


@pytest.fixture(scope="module")
def tls_redis(
    tmp_path_factory: pytest.TempPathFactory, certificates: Certificates
) -> Iterator[RedisServer]:
    files = certificates
    server = start_redis(
        tmp_path_factory.mktemp("redis-tls"),
        "redis-tls",
        "--tls-cert-file", str(files.server_cert),
        "--tls-key-file", str(files.server_key),
        "--tls-ca-cert-file", str(files.ca),
        "--tls-auth-clients", "yes",
    )  # fmt: skip
    yield server
    server.stop()


def tls_url(server: RedisServer, files: Certificates, *, ca: bool = True, db: int = 0) -> str:
    query = f"ssl_certfile={files.client_cert}&ssl_keyfile={files.client_key}"
    if ca:
        query += f"&ssl_ca_certs={files.ca}"
    return f"rediss://:{PASSWORD}@127.0.0.1:{server.port}/{db}?{query}"


def context_on(stack: Stack, broker_url: str) -> JobsContext:
    settings = JobsSettings(broker_url=broker_url, secret_key=TEST_SECRET)
    storage = StorageSettings(database_url=stack.database_url, data_dir=stack.tmp)
    return JobsContext.create(settings, storage)


def run_ping_job(stack: Stack, producer_url: str, worker_url: str, log_path: Path) -> str:
    """A ping job submitted through `producer_url`, run by a worker process on
    `worker_url`; returns the worker's log."""
    env = stack_env(stack.database_url, 0, stack.tmp, SEEKQ_BROKER_URL=worker_url)
    worker = WorkerProcess(env, log_path, queues="cpu.ping").start()
    context = context_on(stack, producer_url)
    try:
        who = context.keys.authenticate(context.keys.create("redis-auth").secret)
        job_id = context.service.submit(who, "ping", {"payload": "hello"}).job.id
        view = context.service.wait(who, job_id, 60)  # job events over the same Redis
        assert view.status == "succeeded", view
        check_every_other_client(context)
    finally:
        context.close()
        worker.stop()
    return worker.log()


def check_every_other_client(context: JobsContext) -> None:
    url = context.settings.broker_url
    # The reconciler's cluster-wide lock.
    assert ReconcilerThread(context.reconciler(), context.redis, 5.0)._won_lock()
    assert context.redis.pttl(LOCK_KEY) > 0

    async def gateway_and_flower() -> int:
        stream_redis = streaming.connect(url)
        assert await stream_redis.ping()
        await stream_redis.aclose()
        limiter = KeyRateLimiter.connect(url, 60, 5, CollectorRegistry())
        decision = await limiter.check("k_redis_auth")  # None would mean "failed open"
        await limiter.close()
        assert decision is not None and decision.allowed
        return await flower_queue_length(context.settings)

    assert asyncio.run(gateway_and_flower()) == 0


async def flower_queue_length(settings: JobsSettings) -> int:
    """What Flower's broker page shows for cpu.ping, built the way Flower builds it."""
    from flower.utils.broker import Broker

    app = flower_celery(settings)
    with app.connection() as connection:
        uri = connection.as_uri(include_password=True)
    broker = Broker(
        uri,
        broker_options=app.conf.broker_transport_options,
        broker_use_ssl=app.conf.broker_use_ssl,
    )
    queues = await broker.queues(["cpu.ping"])
    return int(queues[0]["messages"])


def test_jobs_run_through_a_redis_with_a_password(
    stack: Stack, password_redis: RedisServer, tmp_path: Path
) -> None:
    base = f"127.0.0.1:{password_redis.port}/0"
    log = run_ping_job(
        stack,
        f"redis://:{PASSWORD}@{base}",  # requirepass: the default user
        f"redis://{ACL_USER}:{ACL_PASSWORD}@{base}",  # an ACL user
        tmp_path / "worker.log",
    )
    assert PASSWORD not in log and ACL_PASSWORD not in log
    settings = JobsSettings(broker_url=f"redis://:{PASSWORD}@{base}")
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)


def test_a_wrong_password_is_a_clear_error_and_never_logged(
    stack: Stack, password_redis: RedisServer, tmp_path: Path
) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    url = f"redis://:{wrong}@127.0.0.1:{password_redis.port}/0"
    context = context_on(stack, url)
    try:
        with pytest.raises(redis.AuthenticationError):
            context.redis.ping()
        with TestClient(create_app(context, GatewaySettings())) as gateway:
            ready = gateway.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["broker"] == "error: AuthenticationError"
    finally:
        context.close()
    log = worker_log_until(stack, url, tmp_path / "worker.log", "invalid username-password")
    assert wrong not in log


def worker_log_until(stack: Stack, broker_url: str, log_path: Path, wanted: str) -> str:
    """Start a worker that cannot get in; its log once it says `wanted` (or 60 s)."""
    env = stack_env(stack.database_url, 0, stack.tmp, SEEKQ_BROKER_URL=broker_url)
    worker = WorkerProcess(env, log_path, queues="cpu.ping")
    command = [sys.executable, "-m", "seekq", "worker", "--queues", "cpu.ping"]
    with log_path.open("ab") as log:  # not worker.start(): it waits for a ready worker
        worker.process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while wanted not in worker.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert wanted in worker.log(), worker.log()[-3000:]
    finally:
        worker.stop()
    return worker.log()


def test_jobs_run_through_redis_over_tls_with_client_certificates(
    stack: Stack, tls_redis: RedisServer, certificates: Certificates, tmp_path: Path
) -> None:
    url = tls_url(tls_redis, certificates)
    log = run_ping_job(stack, url, url, tmp_path / "worker.log")
    assert PASSWORD not in log


def test_tls_without_the_ca_is_refused_not_downgraded(
    stack: Stack, tls_redis: RedisServer, certificates: Certificates
) -> None:
    # Without ssl_ca_certs the server's certificate cannot be verified, and every client
    # refuses it: kombu's own fallback for rediss:// (CERT_NONE) is never used.
    # Another database than the other tests': kombu keeps one process-wide connection pool
    # per host, port, password and database, whatever the TLS options, so this app would
    # otherwise publish over the verified connections an earlier test opened.
    url = tls_url(tls_redis, certificates, ca=False, db=1)
    tls = broker_tls(url)
    assert tls is not None and tls["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    context = context_on(stack, url)
    try:
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            context.redis.ping()
        with pytest.raises(BrokerUnavailableError):
            CeleryPublisher(context.celery).publish(get_entry(JobKind.PING), "j_never_run")
    finally:
        context.close()


def test_broker_tls_options_come_from_the_url() -> None:
    assert broker_tls("redis://:pw@host:6379/0") is None
    options = broker_tls(
        "rediss://:pw@host:6380/0?ssl_cert_reqs=optional&ssl_ca_certs=/etc/ca.pem"
        "&ssl_certfile=/etc/c.pem&ssl_keyfile=/etc/c.key&ssl_check_hostname=false"
    )
    assert options == {
        "ssl_cert_reqs": ssl.CERT_OPTIONAL,
        "ssl_ca_certs": "/etc/ca.pem",
        "ssl_certfile": "/etc/c.pem",
        "ssl_keyfile": "/etc/c.key",
        "ssl_check_hostname": False,
    }
    from jobs.errors import ConfigError

    with pytest.raises(ConfigError, match="ssl_cert_reqs"):
        broker_tls("rediss://host/0?ssl_cert_reqs=sometimes")


# ------------------------------------------------------------------ certificates


def _certificate(
    name: str, issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key and its certificate: a CA when `issuer` is None, else a leaf signed by it
    (valid for 127.0.0.1 and localhost)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[1].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(issuer[0] if issuer else key, hashes.SHA256())


def _write(
    cert: x509.Certificate,
    cert_path: Path,
    key: ec.EllipticCurvePrivateKey | None = None,
    key_path: Path | None = None,
) -> None:
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None and key_path is not None:
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        key_path.write_bytes(pem)
