# One image for the Prefect server, the MLflow server and the workers, so that the server and
# client versions always match the pins in pyproject.toml (prefect 3.9, mlflow 3.17,
# torch==2.14.1). torch comes from PyPI (its CUDA build): the same image runs on the CPU
# worker and, with an NVIDIA device reserved, on the GPU worker.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1

# libgomp: OpenMP runtime for faiss/torch CPU kernels.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so code edits do not reinstall torch.
# The `team` extra: psycopg2 (MLflow's postgres store), boto3 (MLflow's S3 artifact proxy)
# and prefect-aws (Prefect results in S3); Prefect's postgres driver (asyncpg) comes with it.
COPY pyproject.toml README.md* ./
RUN mkdir -p slade_core tasks flows \
    && touch slade_core/__init__.py tasks/__init__.py flows/__init__.py \
    && pip install ".[team]" \
    && pip uninstall -y slade \
    && rm -rf slade_core tasks flows build ./*.egg-info

# The project itself: installed, and kept at /app because the deployments in prefect.yaml
# run their entrypoints (flows/pipeline.py) from the directory `prefect deploy` ran in.
COPY . .
RUN pip install --no-deps . \
    && useradd --create-home --uid 1000 slade \
    && mkdir -p /srv/slade \
    && chown -R slade:slade /srv/slade /app

USER slade
# Results, caches and datasets live on the shared volume mounted here (see docker-compose.yml,
# whose workers keep Prefect results in S3 instead of PREFECT_LOCAL_STORAGE_PATH).
ENV SLADE_RUNS_DIR=/srv/slade/runs \
    PREFECT_LOCAL_STORAGE_PATH=/srv/slade/prefect-results \
    SLADE_DOWNLOADS_DIR=/srv/slade/downloads \
    SLADE_DATA_ROOT=/srv/slade/data \
    TORCH_HOME=/srv/slade/cache/torch \
    HF_HOME=/srv/slade/cache/huggingface \
    PREFECT_LOGGING_EXTRA_LOGGERS=slade_core

CMD ["prefect", "version"]
