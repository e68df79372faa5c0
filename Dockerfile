# ckptwatch daemon image.
#
#   CPU:  docker build -t ckptwatch:latest --build-arg REVISION="$(git rev-parse HEAD)" .
#   GPU:  docker build -t ckptwatch:latest-gpu --build-arg BASE=tensorflow/tensorflow:2.21.0-gpu .
#         (the tag's TensorFlow version must be the one pinned in constraints.txt: the venv sees the
#         base image's TensorFlow, built against that image's CUDA, and pip keeps it when it matches)
#
#   docker run -d --name ckptwatch --read-only --tmpfs /tmp --stop-timeout 20 \
#     -v ckptwatch-state:/var/lib/ckptwatch \
#     -v "$PWD/config.toml:/etc/ckptwatch/config.toml:ro" \
#     -v /checkpoints:/checkpoints:ro -p 9847:9847 ckptwatch:latest
#
# --stop-timeout 20: SIGTERM drains for up to daemon.drain_seconds (15 s) before the daemon exits;
# docker's default of 10 s would SIGKILL it mid-drain.
#
# Everything the process writes goes to /var/lib/ckptwatch (state, numba's kernel cache, HOME) or
# /tmp, so the root filesystem can be read-only. The process runs as UID/GID 10001.

ARG BASE=python:3.11-slim-bookworm

# -- builder: a venv with the pinned dependencies and ckptwatch itself ------------------------------
FROM ${BASE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY ckptwatch ./ckptwatch

# --without-pip + --system-site-packages: the venv runs the base image's pip (Ubuntu-based TensorFlow
# images have no ensurepip) and sees the base image's TensorFlow in the GPU variant.
RUN python3 -m venv --without-pip --system-site-packages /opt/ckptwatch/venv \
 && /opt/ckptwatch/venv/bin/python3 -m pip install -c constraints.txt pip setuptools wheel \
 && /opt/ckptwatch/venv/bin/python3 -m pip install -c constraints.txt . \
 && /opt/ckptwatch/venv/bin/ckptwatch --version

# -- runtime ----------------------------------------------------------------------------------------
FROM ${BASE}

ARG UID=10001
ARG GID=10001
# the git commit: ckptwatch_build_info{revision=...} (unknown unless given)
ARG REVISION=unknown

LABEL org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.title="ckptwatch" \
      org.opencontainers.image.description="Verifies TensorFlow checkpoints as they are written; Prometheus metrics on :9847" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid "${GID}" ckptwatch \
 && useradd --system --no-log-init --uid "${UID}" --gid "${GID}" --home-dir /var/lib/ckptwatch \
      --shell /usr/sbin/nologin ckptwatch \
 && mkdir -p /var/lib/ckptwatch/.cache /etc/ckptwatch \
 && chown -R "${UID}:${GID}" /var/lib/ckptwatch

COPY --from=builder /opt/ckptwatch/venv /opt/ckptwatch/venv
COPY deploy/config.example.toml /etc/ckptwatch/config.example.toml

# HOME, XDG_CACHE_HOME and NUMBA_CACHE_DIR point into the state volume: numba compiles the
# verification kernels with cache=True and must find a writable cache directory (with a read-only
# root filesystem nothing else is writable). CKPTWATCH_* override the config file's keys.
ENV PATH=/opt/ckptwatch/venv/bin:$PATH \
    HOME=/var/lib/ckptwatch \
    XDG_CACHE_HOME=/var/lib/ckptwatch/.cache \
    NUMBA_CACHE_DIR=/var/lib/ckptwatch/.cache/numba \
    TMPDIR=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    CKPTWATCH_LISTEN=0.0.0.0:9847 \
    CKPTWATCH_STATE_DIR=/var/lib/ckptwatch \
    CKPTWATCH_LOG_FORMAT=json \
    CKPTWATCH_REVISION=${REVISION}

VOLUME ["/var/lib/ckptwatch"]
WORKDIR /var/lib/ckptwatch
USER ${UID}:${GID}
EXPOSE 9847

# /healthz on the port of CKPTWATCH_LISTEN (a wildcard host is asked on loopback); no curl in slim images.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/opt/ckptwatch/venv/bin/python3", "-c", "import os, urllib.request as u; h, _, p = os.environ.get('CKPTWATCH_LISTEN', '127.0.0.1:9847').rpartition(':'); h = {'': '127.0.0.1', '0.0.0.0': '127.0.0.1', '[::]': '[::1]'}.get(h, h); u.urlopen(f'http://{h}:{p}/healthz', timeout=4).read()"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/ckptwatch/venv/bin/ckptwatch", "watch", "--config", "/etc/ckptwatch/config.toml"]
