# CRS CDS Hooks service. Build: docker build -t crs-cds .   Run: docker run -p 8000:8000 crs-cds
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 crs
WORKDIR /app

# The same install as the README (an editable install, so that the bundled rules/ and
# fhir_mappings/ are read from beside the package), without the dev tools.
COPY pyproject.toml README.md ./
COPY cds ./cds
COPY bench ./bench
COPY rules ./rules
COPY fhir_mappings ./fhir_mappings
RUN pip install -e . && chown -R crs:crs /app

USER crs
ENV CRS_HOST=0.0.0.0 \
    CRS_PORT=8000
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" || exit 1

CMD ["crs-cds", "serve"]
