# syntax=docker/dockerfile:1
#
# seekq image: one image for every role (migrate, gateway, workers).
# The role is picked by the command, e.g.
#   docker run --rm seekq:local db upgrade
#   docker run --rm -p 127.0.0.1:8000:8000 seekq:local gateway --host 0.0.0.0 --port 8000
#   docker run --rm seekq:local worker --queues cpu.index
#
# NOTE: this image has not been built in the environment where it was written
# (no Docker engine there); only docker-compose.yml was validated with
# `docker-compose config`. See scripts/check_compose.sh.
#
# GPU: this is a python:3.11-slim image. torch is pinned in pyproject.toml
# (torch==2.13.0) and is resolved against whatever index the build host
# reaches. A proper CUDA worker image would instead base on an
# nvidia/cuda:*-runtime image (or at least be tested against the host driver
# through the NVIDIA Container Toolkit) -- open issue, not done here.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- builder ---
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# Compilers only live in the builder stage, for any dependency that ships no
# wheel for this platform; they never reach the runtime image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY . .

# Optional, CPU-only torch (much smaller image, fine for the gateway and the
# cpu.* workers, useless for gpu.* workers). Opt in by uncommenting the ARG
# and swapping the install line below for the commented one, then build with
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
# ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" .
RUN pip install --no-cache-dir .

# ---------------------------------------------------------------- runtime ---
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="seekq" \
      org.opencontainers.image.description="Self-hosted, queue-native job system for LLM workloads" \
      org.opencontainers.image.licenses="Apache-2.0"

# Non-root user with a fixed uid/gid so volume ownership is predictable.
RUN groupadd --system --gid 10001 seekq \
 && useradd --system --uid 10001 --gid seekq --create-home --home-dir /home/seekq \
            --shell /usr/sbin/nologin seekq \
 && mkdir -p /data \
 && chown seekq:seekq /data

COPY --from=builder /opt/venv /opt/venv

# All state (artefacts, indexes, model cache) lives on the /data volume. A
# named volume mounted there is first populated from this image directory, so
# it inherits seekq:seekq ownership.
# HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE: never reach out to a model hub at run
# time; models must come from an installed package or be pre-placed under
# $HF_HOME.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SEEKQ_DATA_DIR=/data \
    HF_HOME=/data/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

USER seekq:seekq
WORKDIR /home/seekq

EXPOSE 8000

ENTRYPOINT ["seekq"]
CMD ["gateway", "--host", "0.0.0.0", "--port", "8000"]
