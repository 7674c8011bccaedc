"""Everything a process needs to produce or run jobs, built once from settings."""

import functools
import os
import socket
from dataclasses import dataclass

from celery import Celery
from redis import Redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from jobs.adapters import AdapterService
from jobs.batches import BatchService
from jobs.catalog import JobKind
from jobs.files import FileService
from jobs.finetunes import FineTuneService
from jobs.indexes import IndexService
from jobs.keys import KeyStore
from jobs.lifecycle import EndObserver, Lifecycle
from jobs.notify import JobEvents
from jobs.pii import PiiMasker
from jobs.queue import CeleryPublisher, make_celery, publish_deliveries
from jobs.quota import TenantQuota
from jobs.reconciler import Reconciler
from jobs.registry import ModelRegistry
from jobs.service import JobService
from jobs.settings import JobsSettings, derive_key, get_jobs_settings, load_secret_key
from jobs.webhook_delivery import Deliverer, Sender
from jobs.webhook_endpoints import WebhookService
from jobs.webhook_urls import UrlPolicy
from jobs.webhooks import Signer, WebhookOutbox
from storage.artifacts import ArtifactStore, LocalArtifactStore
from storage.db import make_engine, make_session_factory
from storage.settings import StorageSettings, get_storage_settings


@dataclass
class JobsContext:
    settings: JobsSettings
    engine: Engine
    sessions: sessionmaker[Session]
    celery: Celery
    redis: Redis
    events: JobEvents
    models: ModelRegistry
    service: JobService
    keys: KeyStore
    artifacts: ArtifactStore
    files: FileService
    indexes: IndexService
    finetunes: FineTuneService
    adapters: AdapterService
    batches: BatchService
    webhooks: WebhookService
    outbox: WebhookOutbox
    # Told of every attempt's end by the lifecycles this context makes (worker metrics).
    end_observer: EndObserver | None = None

    @classmethod
    def create(
        cls, settings: JobsSettings | None = None, storage: StorageSettings | None = None
    ) -> "JobsContext":
        settings = settings or get_jobs_settings()
        storage = storage or get_storage_settings()
        secret = load_secret_key(settings, storage)
        engine = make_engine(storage.resolved_database_url(), pool_size=storage.pool_size)
        sessions = make_session_factory(engine)
        celery = make_celery(settings)
        redis = Redis.from_url(settings.broker_url, socket_timeout=5, socket_connect_timeout=2)
        events = JobEvents(redis)
        models = ModelRegistry.load(
            settings.resolved_models_file(storage), settings.trust_remote_code
        )
        masker = PiiMasker(derive_key(secret, "pii"))
        outbox = WebhookOutbox(functools.partial(publish_deliveries, celery))
        service = JobService(
            sessions,
            CeleryPublisher(celery),
            masker,
            events,
            derive_key(secret, "request"),
            models,
            settings.max_new_tokens,
            TenantQuota(
                sessions, settings.tenant_max_jobs_in_flight, settings.tenant_max_enqueued_tokens
            ),
            outbox,
        )
        keys = KeyStore(sessions, derive_key(secret, "api-key"))
        artifacts = LocalArtifactStore.from_settings(storage)
        files = FileService(
            sessions,
            artifacts,
            masker,
            settings.max_file_bytes,
            (settings.finetune_min_examples, settings.finetune_max_examples),
            settings.batch_max_lines,
        )
        indexes = IndexService(sessions, models, service, artifacts)
        finetunes = FineTuneService(sessions, service, files, models)
        service.checks[JobKind.FINETUNE] = finetunes.check  # dataset checks at submit
        adapters = AdapterService(sessions, artifacts)
        batches = BatchService(service, files)
        policy = UrlPolicy(settings.webhook_allowed_networks, settings.webhook_allow_http)
        webhooks = WebhookService(
            sessions,
            Signer(derive_key(secret, "webhooks")),
            policy,
            Sender(policy, settings.webhook_timeout_s),
            settings.webhook_max_endpoints,
        )
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            celery=celery,
            redis=redis,
            events=events,
            models=models,
            service=service,
            keys=keys,
            artifacts=artifacts,
            files=files,
            indexes=indexes,
            finetunes=finetunes,
            adapters=adapters,
            batches=batches,
            webhooks=webhooks,
            outbox=outbox,
        )

    def lifecycle(self, worker: str | None = None) -> Lifecycle:
        name = worker or f"{socket.gethostname()}:{os.getpid()}"
        return Lifecycle(
            self.sessions,
            self.events,
            self.settings.lease_s,
            name,
            self.outbox,
            self.end_observer,
            self.settings.max_attempts,
        )

    def deliverer(self) -> Deliverer:
        """Sends webhook deliveries (the worker's webhook task, the reconciler's sweep)."""
        webhooks = self.webhooks
        return Deliverer(
            self.sessions, webhooks.signer, webhooks.sender, self.settings.webhook_retry_delays_s
        )

    def reconciler(self) -> Reconciler:
        publisher = CeleryPublisher(self.celery)
        settings = self.settings
        return Reconciler(
            self.sessions,
            publisher,
            self.events,
            settings.max_attempts,
            settings.lease_s,
            self.outbox,
            self.deliverer(),
            self.end_observer,
            settings.dispatch_grace_s,
            self.models,
        )

    def close(self) -> None:
        self.redis.close()
        self.engine.dispose()
