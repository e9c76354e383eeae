# The training image for k8s/training/job.yaml: the repository's code, its training extras
# (CPU torch) and the datasets. Build from the repository root after `make data`:
#   docker build -f k8s/training/train.Dockerfile -t seedserve-train:0.1.0 .
# Runs as uid 10001, the servers' user, so the versions it publishes are theirs to read.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
# CPU wheels of torch (the PyPI ones bundle CUDA); everything else from PyPI. The versions are
# pyproject.toml's (torch==2.13.0 in the train extra).
# hadolint ignore=DL3013
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[train]"
COPY data/mnist ./data/mnist
COPY data/fashion-mnist ./data/fashion-mnist
USER 10001:10001
CMD ["python", "-m", "training"]
