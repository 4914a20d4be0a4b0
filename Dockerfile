# CRS CDS Hooks service: the wheel built from this checkout, installed with the locked
# dependencies (every file checked against its hash) into a venv, run as a non-root user.
#   docker build -t crs-cds:0.1.0 .
#   docker run --read-only --tmpfs /tmp -p 8000:8000 \
#     -v "$PWD/trusted-clients.yaml:/etc/crs-cds/trusted-clients.yaml:ro" \
#     -e CRS_TRUSTED_CLIENTS_FILE=/etc/crs-cds/trusted-clients.yaml crs-cds:0.1.0
# Other commands: `docker run crs-cds:0.1.0 db upgrade`, `… watch run`, `… rules`. README "Deploy".
# Pin the base by digest for a byte-for-byte rebuild: --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:…
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the wheel (sdist first, then the wheel from the sdist, as a release would) ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements/bootstrap.txt requirements/build.txt requirements/
RUN pip install --require-hashes --no-deps -r requirements/bootstrap.txt
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY cds cds
COPY bench bench
COPY rules rules
COPY fhir_mappings fhir_mappings
RUN uv build --out-dir /dist --build-constraints requirements/build.txt --require-hashes .

# --- runtime ---
FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/crs-cds/bin:$PATH

# Byte code is compiled here, at install time, so nothing is written at run time.
COPY requirements/runtime.txt /tmp/runtime.txt
COPY --from=build /dist/ /tmp/dist/
RUN python -m venv /opt/crs-cds \
    && /opt/crs-cds/bin/pip install --require-hashes -r /tmp/runtime.txt \
    && /opt/crs-cds/bin/pip install --no-deps /tmp/dist/crs_cds-*.whl \
    && /opt/crs-cds/bin/pip uninstall --yes pip \
    && rm -rf /tmp/runtime.txt /tmp/dist

# The only writable places: the data directory (a volume) and /tmp (a tmpfs in production).
RUN groupadd --system --gid 10001 crs \
    && useradd --system --uid 10001 --gid crs --home-dir /var/lib/crs-cds --no-create-home \
       --shell /usr/sbin/nologin crs \
    && mkdir -p /var/lib/crs-cds \
    && chown crs:crs /var/lib/crs-cds
VOLUME ["/var/lib/crs-cds"]
WORKDIR /var/lib/crs-cds

# Production defaults: listen on every interface. `serve` then refuses to start unless
# CRS_TRUSTED_CLIENTS_FILE names the EHRs allowed to call (or --allow-unauthenticated).
ENV CRS_HOST=0.0.0.0 \
    CRS_PORT=8000 \
    CRS_DATA_DIR=/var/lib/crs-cds \
    HOME=/var/lib/crs-cds
USER 10001:10001
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CRS_PORT', '8000') + '/healthz', timeout=2)"]

ENTRYPOINT ["crs-cds"]
CMD ["serve"]
