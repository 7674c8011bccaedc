# syntax=docker/dockerfile:1
#
# Two images from one file:
#   docker build --target gateway -t seekq-gateway:local .   # gateway, migrate, flower:
#                                                            # no torch, no CUDA (~300 MB)
#   docker build --target worker  -t seekq:local .           # workers: CUDA runtime, torch,
#                                                            # transformers, PEFT, FAISS
# The role is picked by the command (ENTRYPOINT is `seekq`):
#   docker run --rm seekq-gateway:local db upgrade
#   docker run --rm -p 127.0.0.1:8000:8000 seekq-gateway:local gateway --host 0.0.0.0
#   docker run --rm --gpus '"device=0"' seekq:local worker --queues gpu.generate --gpu 0
#
# NOTE: neither image has been built where this was written (no Docker engine there);
# docker-compose.yml was validated with `docker-compose config` (scripts/check_compose.sh).
# The gateway image installs `seekq` without its `worker` extra: the gateway never
# imports torch (an import-linter contract; tests/unit/test_gateway_without_torch.py).

ARG PYTHON_IMAGE=python:3.11-slim
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ------------------------------------------------------------ gateway build ---
FROM ${PYTHON_IMAGE} AS gateway-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir .

# ------------------------------------------------------------------ gateway ---
FROM ${PYTHON_IMAGE} AS gateway
LABEL org.opencontainers.image.title="seekq-gateway" \
      org.opencontainers.image.description="seekq gateway, migrations and Flower (no torch)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 seekq \
 && useradd --system --uid 10001 --gid seekq --create-home --home-dir /home/seekq \
            --shell /usr/sbin/nologin seekq \
 && mkdir -p /data && chown seekq:seekq /data
COPY --from=gateway-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    SEEKQ_DATA_DIR=/data HF_HUB_OFFLINE=1
USER seekq:seekq
WORKDIR /home/seekq
EXPOSE 8000 5555
ENTRYPOINT ["seekq"]
CMD ["gateway", "--host", "0.0.0.0", "--port", "8000"]

# ------------------------------------------------------------- worker build ---
# torch==2.13.0 from PyPI is the CUDA build on Linux x86_64; it brings its own CUDA
# libraries, so the runtime base only needs the driver-facing parts and cuDNN.
FROM ${CUDA_IMAGE} AS worker-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 \
    DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY . .
# The CPU builds of onnxruntime and faiss make way for their GPU builds (same modules):
# the CUDA and TensorRT providers for the onnx/tensorrt embedding backends, faiss-gpu for
# flat and IVF indexes (pyproject's `gpu` extra).
# (`pip install ".[worker,gpu]"` would put the CPU builds back: `worker` requires them).
RUN pip install --no-cache-dir ".[worker]" \
 && pip uninstall -y onnxruntime faiss-cpu \
 && pip install --no-cache-dir "onnxruntime-gpu>=1.22,<2" "tensorrt-cu12>=10" \
      "faiss-gpu-cu12>=1.11"

# ------------------------------------------------------------------- worker ---
FROM ${CUDA_IMAGE} AS worker
LABEL org.opencontainers.image.title="seekq-worker" \
      org.opencontainers.image.description="seekq GPU/CPU worker (CUDA, torch, transformers, PEFT, FAISS)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 seekq \
 && useradd --system --uid 10001 --gid seekq --create-home --home-dir /home/seekq \
            --shell /usr/sbin/nologin seekq \
 && mkdir -p /data && chown seekq:seekq /data
COPY --from=worker-build /opt/venv /opt/venv
# All state (artefacts, indexes, models) lives on the /data volume; never reach a model
# hub at run time: models come from an installed package or the data volume.
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    SEEKQ_DATA_DIR=/data HF_HOME=/data/huggingface HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
USER seekq:seekq
WORKDIR /home/seekq
EXPOSE 9400
ENTRYPOINT ["seekq"]
CMD ["worker", "--queues", "gpu.embed", "--gpu", "0"]
