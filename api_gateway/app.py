"""The FastAPI application factory."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api_gateway import errors, streaming
from api_gateway.limits import BodySizeLimit
from api_gateway.metrics import GatewayMetrics, MetricsMiddleware
from api_gateway.rate_limit import KeyRateLimiter, RateLimitHeaders
from api_gateway.routes import (
    batches,
    dashboard,
    files,
    fine_tuning,
    health,
    indexes,
    jobs,
    openai,
    webhooks,
)
from api_gateway.settings import GatewaySettings, get_gateway_settings
from jobs.context import JobsContext
from jobs.settings import get_jobs_settings

UPLOAD_FRAMING_BYTES = 64 * 1024


def create_app(
    context: JobsContext | None = None, settings: GatewaySettings | None = None
) -> FastAPI:
    """The gateway app; the job context is built at startup unless one is given."""
    settings = settings or get_gateway_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = context is None
        app.state.context = context or JobsContext.create()
        app.state.settings = settings
        app.state.stream_redis = streaming.connect(app.state.context.settings.broker_url)
        app.state.rate_limiter = KeyRateLimiter.connect(
            app.state.context.settings.broker_url,
            settings.rate_limit_per_minute,
            settings.rate_limit_burst,
            metrics.registry,
        )
        ctx = app.state.context
        metrics.watch_queues(ctx.redis, ctx.sessions, ctx.models.own_queues())
        yield
        await app.state.stream_redis.aclose()
        await app.state.rate_limiter.close()
        if owned:
            app.state.context.close()

    app = FastAPI(
        title="seekq",
        version="0.1.0",
        summary="Queue-native jobs for LLM workloads: native and OpenAI-compatible API",
        lifespan=lifespan,
    )
    metrics = GatewayMetrics()
    app.state.metrics = metrics
    errors.install(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(openai.router)
    app.include_router(files.router)
    app.include_router(indexes.router)
    app.include_router(fine_tuning.router)
    app.include_router(batches.router)
    app.include_router(webhooks.router)
    app.include_router(dashboard.router)
    # Uploads may be up to SEEKQ_MAX_FILE_BYTES, plus room for the multipart framing.
    max_file_bytes = (context.settings if context else get_jobs_settings()).max_file_bytes
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        upload_max_bytes=max_file_bytes + UPLOAD_FRAMING_BYTES,
        upload_paths=frozenset({"/v1/files"}),
    )
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: a 413 is timed too
    return app
