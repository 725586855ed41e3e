# The vaeguard daemon (`vaeguard run`).
#
#   docker build -t vaeguard .                                        # slim CPU image
#   docker build -t vaeguard:gpu \
#       --build-arg BASE_IMAGE=tensorflow/tensorflow:2.21.0-gpu .      # CUDA image, scores on the GPU
#
#   docker run --rm -p 8080:8080 \
#       -v $PWD/models:/models:ro -v $PWD/vaeguard.yaml:/etc/vaeguard/vaeguard.yaml:ro \
#       -e VAEGUARD_KAFKA__BOOTSTRAP_SERVERS=kafka:9092 vaeguard
#
# Settings come from /etc/vaeguard/vaeguard.yaml (the commented example is baked in: mount your
# own over it) and from VAEGUARD_<SECTION>__<FIELD> environment variables, which win.
# The alert spool lives in /var/lib/vaeguard: mount a volume there so spooled alerts survive a
# container replacement. Give each replica a stable VAEGUARD_KAFKA__GROUP_INSTANCE_ID (e.g. a
# StatefulSet pod name): a restarted container then takes its partitions back at once.
#
# Dependencies come from requirements.lock only: exact versions with their hashes, installed with
# --require-hashes --no-deps, then the project itself with --no-deps (no other download at all:
# the build backend, setuptools, is in the lock and the build is not isolated). The lock is for
# Linux x86_64 and Python 3.12 (this base image); its header has the command that regenerates it
# (it keeps the pins; add --upgrade to move them). Its tensorflow pin matches the GPU base's tag,
# where pip keeps the TensorFlow already installed.

ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    TF_CPP_MIN_LOG_LEVEL=2

# Only what the package needs: the project's own files (see .dockerignore), no tests or data.
# The locked dependencies first: their layer is rebuilt only when the lock changes.
WORKDIR /src
COPY requirements.lock ./
RUN python3 -m pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY vaeguard ./vaeguard
COPY config/vaeguard.yaml /etc/vaeguard/vaeguard.yaml
RUN python3 -m pip install --no-deps --no-build-isolation . \
    && rm -rf /src \
    && useradd --system --uid 10001 --home-dir /var/lib/vaeguard --create-home \
       --shell /usr/sbin/nologin vaeguard

USER vaeguard
WORKDIR /var/lib/vaeguard

# In a container the ops listener must be reachable from outside it (probes, Prometheus).
# The port is set here so that HEALTHCHECK knows it: change both together if you change it.
ENV VAEGUARD_HTTP__HOST=0.0.0.0 \
    VAEGUARD_HTTP__PORT=8080 \
    VAEGUARD_ALERTS__SPOOL_DIR=/var/lib/vaeguard/spool
EXPOSE 8080

# /healthz answers as long as the process is alive; python's urllib, so no curl in the image.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('VAEGUARD_HTTP__PORT', '8080'), timeout=4)"]

# SIGTERM (docker stop) finishes the in-flight batch, commits and exits 0 within
# shutdown_grace_s (30 s): give `docker stop -t` / terminationGracePeriodSeconds a bit more.
STOPSIGNAL SIGTERM
ENTRYPOINT ["vaeguard", "run"]
CMD ["--config", "/etc/vaeguard/vaeguard.yaml"]
