# syntax=docker/dockerfile:1
# Migration dashboard: gunicorn serving dashboard:create_app() as a non-root user, or with the
# argument `worker` an RQ worker (JOB_EXECUTOR=rq; docs/deploy.md).
# docker/entrypoint.sh upgrades the dashboard's own store (flask db upgrade), then execs gunicorn.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

# Dependencies first, in their own layer, so a source change does not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The source tree keeps its layout: dashboard/__init__.py finds the store's schema at
# Path(__file__).parent.parent / "migrations", i.e. /app/migrations, so install in place (-e).
COPY config.py environments.yaml ./
COPY dashboard/ dashboard/
COPY migrations/ migrations/
COPY examples/ examples/
COPY docker/ docker/
# PYTHONDONTWRITEBYTECODE (above) keeps the running containers from writing caches, and the
# non-root user could not write them here anyway: compile the dashboard once, at build, or every
# gunicorn worker and CLI command compiles its ~90 modules again on start (~0.2 s).
RUN pip install --no-cache-dir --no-deps -e . \
    && python -m compileall -q dashboard config.py \
    && chmod 0755 docker/entrypoint.sh docker/healthcheck.py \
    && groupadd --system --gid 10001 dashboard \
    && useradd --system --uid 10001 --gid dashboard --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin dashboard \
    && mkdir -p /app/instance \
    && chown dashboard:dashboard /app/instance

# The store defaults to a SQLite file in the instance volume (not beside ENVIRONMENTS_FILE,
# which is usually mounted read-only); production sets DASHBOARD_DATABASE_URL to PostgreSQL.
ENV FLASK_APP=dashboard \
    DASHBOARD_CONFIG=production \
    DASHBOARD_DATABASE_URL=sqlite:////app/instance/dashboard.db \
    PORT=8000

# The instance folder holds the audit anchor file (and a SQLite store, if one is used): keep it.
VOLUME ["/app/instance"]

USER 10001:10001

EXPOSE 8000

# Ready = the store (and, with JOB_EXECUTOR=rq, Redis) answers: /readyz, 503 with the reason
# otherwise. A worker container (`worker` argument) serves no HTTP: docker/healthcheck.py checks
# the same through the app instead (see docs/deploy.md).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "/app/docker/healthcheck.py"]

ENTRYPOINT ["/app/docker/entrypoint.sh"]
