# seedserve: the service (onnxruntime, no torch, no compilers) and the model repository models/.
#
#   docker build -t seedserve:0.1.0 .                      CPU image: the default (last) stage
#   docker build --target gpu -t seedserve:0.1.0-gpu .     CUDA image with onnxruntime-gpu
#   docker run --rm -p 127.0.0.1:8000:8000 -p 127.0.0.1:8001:8001 seedserve:0.1.0
#
# REST on 8000 (SEEDSERVE_PORT), gRPC on 8001 (SEEDSERVE_GRPC_PORT: inference.GRPCInferenceService
# and grpc.health.v1.Health), one process serving both.
#
# Configured through SEEDSERVE_* environment variables only (docs/configuration.md); the server
# is PID 1 (exec-form CMD, no shell), so `docker stop` (SIGTERM) shuts it down gracefully, exit 0.
# Build with BuildKit (Docker's default builder since 23.0): it builds only the stages the target
# needs, whereas the legacy builder would also pull the CUDA base for the CPU image.
# docs/deployment.md explains every choice made here.

# onnxruntime-gpu 1.31 is built for CUDA 13 and cuDNN 9: change the two together.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG ONNXRUNTIME_GPU=onnxruntime-gpu==1.31.1

# ---------------------------------------------------------------------------------------------
# GPU: the virtual environment, built on the CUDA base so that its Python is the runtime's.
FROM ${CUDA_IMAGE} AS gpu-build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md deploy/docker/dependencies.py ./
ARG ONNXRUNTIME_GPU
RUN python3 -m venv /opt/seedserve \
 && python3 dependencies.py --onnxruntime "${ONNXRUNTIME_GPU}" > requirements.txt \
 && /opt/seedserve/bin/pip install --no-cache-dir -r requirements.txt
COPY service ./service
RUN /opt/seedserve/bin/pip install --no-cache-dir --no-deps . \
 && /opt/seedserve/bin/pip uninstall -y pip \
 && find /opt/seedserve/lib -type d -name tests -prune -exec rm -rf {} +

# GPU runtime: SEEDSERVE_PROVIDER=cuda; run with `docker run --gpus all ...`.
FROM ${CUDA_IMAGE} AS gpu
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 seedserve \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin seedserve
COPY --from=gpu-build /opt/seedserve /opt/seedserve
COPY deploy/docker/healthcheck.py /opt/seedserve/healthcheck.py
COPY models /models
LABEL org.opencontainers.image.title="seedserve" \
      org.opencontainers.image.description="onnxruntime model server (CUDA)"
ENV PATH=/opt/seedserve/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SEEDSERVE_HOST=0.0.0.0 \
    SEEDSERVE_PORT=8000 \
    SEEDSERVE_GRPC_PORT=8001 \
    SEEDSERVE_MODELS_DIR=/models \
    SEEDSERVE_PROVIDER=cuda
USER 10001:10001
WORKDIR /opt/seedserve
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["python", "/opt/seedserve/healthcheck.py"]
CMD ["python", "-m", "service"]

# ---------------------------------------------------------------------------------------------
# CPU: the virtual environment. Python 3.11 from Debian; onnxruntime's wheel needs no compiler.
FROM debian:bookworm-slim AS build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md deploy/docker/dependencies.py ./
RUN python3 -m venv /opt/seedserve \
 && python3 dependencies.py > requirements.txt \
 && /opt/seedserve/bin/pip install --no-cache-dir -r requirements.txt
COPY service ./service
# Then pip goes (the runtime installs nothing), and so do the packages' own test suites.
RUN /opt/seedserve/bin/pip install --no-cache-dir --no-deps . \
 && /opt/seedserve/bin/pip uninstall -y pip setuptools \
 && find /opt/seedserve/lib -type d -name tests -prune -exec rm -rf {} +

# CPU runtime (the default target): Python, the virtual environment and the models; nothing else.
FROM debian:bookworm-slim AS runtime
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 seedserve \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin seedserve
COPY --from=build /opt/seedserve /opt/seedserve
COPY deploy/docker/healthcheck.py /opt/seedserve/healthcheck.py
COPY models /models
LABEL org.opencontainers.image.title="seedserve" \
      org.opencontainers.image.description="onnxruntime model server (CPU)"
ENV PATH=/opt/seedserve/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SEEDSERVE_HOST=0.0.0.0 \
    SEEDSERVE_PORT=8000 \
    SEEDSERVE_GRPC_PORT=8001 \
    SEEDSERVE_MODELS_DIR=/models \
    SEEDSERVE_PROVIDER=cpu
USER 10001:10001
WORKDIR /opt/seedserve
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["python", "/opt/seedserve/healthcheck.py"]
CMD ["python", "-m", "service"]
