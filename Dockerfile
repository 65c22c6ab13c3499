# syntax=docker/dockerfile:1
# One image for every prospect process; the container's command picks which:
#   python -m services.jobs             gRPC API (50051), health and reflection
#   python -m services.discovery        worker (health on HEALTH_GRPC_ADDR)
#   python -m services.enrichment       worker (health on HEALTH_GRPC_ADDR)
#   python -m services.jobs.migrate     schema migrations, then exit
#   python -m services.jobs.retention   delete finished jobs older than RETENTION_DAYS
# Build: `make image` (docker build -t prospect:<version> .).

# Pinned by version; pin by digest too (python:3.11.14-slim-bookworm@sha256:...) where
# the registry is reachable, and let a bot bump both.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- build: a virtualenv with the dependencies, the generated stubs and the services ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv

# Dependencies first (the lock files alone), so a code change reuses this layer: the
# services' packages exactly as locked, hashes checked, so two builds of one commit get
# the same ones; the build tools (the stub generator) in a virtualenv of their own that
# stays in this stage.
COPY requirements ./requirements
RUN pip install --require-hashes -r requirements/runtime.lock \
    && python -m venv /opt/tools \
    && /opt/tools/bin/pip install --require-hashes -r requirements/dev.lock

# Stubs generated here, as `make proto` does, never copied from a work tree. Then the
# installers go and the installed code is checked from outside the source tree: imports,
# migrations.
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY services ./services
RUN GOOGLEAPIS="$(/opt/tools/bin/python -c 'import google.api.annotations_pb2 as m, pathlib; print(pathlib.Path(m.__file__).parents[2])')" \
    && /opt/tools/bin/python -m grpc_tools.protoc -I protos -I "$GOOGLEAPIS" --python_out=. \
        --pyi_out=. --grpc_python_out=. protos/prospect/v1/*.proto \
    && touch prospect/__init__.py prospect/v1/__init__.py prospect/py.typed \
    && pip install --no-deps . \
    && python -m pip uninstall -y pip setuptools wheel \
    && cd / && rm -rf /src \
    && python -c 'import services.jobs.server, services.discovery.worker, services.enrichment.worker' \
    && DATABASE_URL=sqlite:////tmp/smoke.db python -m services.jobs.migrate \
    && rm -f /tmp/smoke.db*

# --- runtime: the virtualenv on a clean base, no compilers, caches or installers --------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 prospect \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin prospect \
    && python -m pip uninstall -y --root-user-action=ignore pip setuptools wheel \
    && rm -rf /root/.cache
COPY --from=build /opt/venv /opt/venv
# An empty, read-only working directory (python -m puts it on sys.path).
WORKDIR /app
# Numeric, so Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 50051 8081
CMD ["python", "-m", "services.jobs"]
