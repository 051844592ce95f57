# syntax=docker/dockerfile:1
# The two images of jobqueue, built from this one file:
#
#   docker build --target operator -t jobqueue-operator:0.1.0 .
#   docker build --target worker   -t jobqueue-worker:0.1.0 .
#
# A build stage installs the package and its dependencies into a virtualenv; the runtime
# stages copy only that virtualenv onto a clean slim base, so no compiler, pip cache or
# source tree ends up in an image. Both images run as the numeric user 10001: Kubernetes'
# runAsNonRoot can only verify a numeric USER, and the chart sets readOnlyRootFilesystem,
# so nothing here expects to write outside /tmp (which the chart mounts as an emptyDir).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/jobqueue
# Metadata first, code second: the dependency layer is reused while only code changes.
COPY pyproject.toml README.md ./
COPY jobqueue ./jobqueue
RUN /opt/jobqueue/bin/pip install --no-compile . \
    && /opt/jobqueue/bin/python -m compileall -q /opt/jobqueue/lib

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="jobqueue" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/jobqueue/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 jobqueue \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin jobqueue
COPY --from=build /opt/jobqueue /opt/jobqueue
WORKDIR /tmp
USER 10001:10001

FROM runtime AS worker
ENTRYPOINT ["jobqueue-worker"]

# Last, so a plain `docker build .` gives the operator.
FROM runtime AS operator
# gRPC API; /metrics, /healthz and /readyz.
EXPOSE 7070 9090
ENTRYPOINT ["jobqueue-operator"]
