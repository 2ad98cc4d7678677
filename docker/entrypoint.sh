#!/usr/bin/env bash
# Container entry point for the migration dashboard.
#
# 1. `flask db upgrade` brings the dashboard's OWN store (DASHBOARD_DATABASE_URL, default
#    instance/dashboard.db) up to date from the top-level migrations/ folder. It never touches
#    the target databases listed in environments.yaml.
# 2. With the argument `worker` (and any options of it), exec `flask dashboard worker`: an RQ
#    worker for JOB_EXECUTOR=rq (docs/deploy.md). With other arguments, exec them (docker
#    convention: `docker run IMAGE flask dashboard status`); without, exec gunicorn serving
#    "dashboard:create_app()".
#
# `flask` and `gunicorn` are taken from PATH. Settings (all optional):
#   BIND_HOST          address to bind (default 0.0.0.0)
#   PORT               port to bind (default 8000)
#   GUNICORN_WORKERS   worker processes (default 2)
#   GUNICORN_THREADS   threads per worker (default 4); one process of the whole deployment (the
#                      holder of a lease in the store) reads the statuses, every worker shows them
#   GUNICORN_KEEPALIVE seconds an idle client connection stays open (default 75, longer than a
#                      load balancer's or a browser's idle reuse: gunicorn's own 2 s closes
#                      connections just as clients reuse them, which they see as resets)
#   GUNICORN_CMD_ARGS  any further gunicorn options (read by gunicorn itself)
#   DASHBOARD_UPGRADE_STORE  0: skip step 1 (several replicas: one `migrate` container upgrades)
#   DASHBOARD_LOG_FORMAT     json: the app logs every request as a JSON line with its request id,
#                      so gunicorn's own (text) access log is left off
#   DASHBOARD_ROLE_FILE  where the container's role (web or worker) is noted for
#                      docker/healthcheck.py (default /tmp/migration-dashboard.role)
#   MALLOC_MMAP_THRESHOLD_  glibc's fixed mmap threshold for gunicorn (default 131072 bytes):
#                      each sign-in's argon2 hash takes 19 MiB, and with glibc's adaptive
#                      threshold every thread that ever hashed kept its 19 MiB in its own
#                      arena (a worker of 4 threads: +76 MiB for good); mmapped, it is returned
set -euo pipefail

export FLASK_APP="${FLASK_APP:-dashboard}"
role_file="${DASHBOARD_ROLE_FILE:-/tmp/migration-dashboard.role}"

if [ "${DASHBOARD_UPGRADE_STORE:-1}" != "0" ]; then
    echo "entrypoint: upgrading the dashboard's own store (flask db upgrade)" >&2
    flask db upgrade
else
    echo "entrypoint: DASHBOARD_UPGRADE_STORE=0, not upgrading the store" >&2
fi

if [ "${1:-}" = "worker" ]; then
    shift
    echo worker > "$role_file" || true
    exec flask dashboard worker "$@"
fi
if [ $# -gt 0 ]; then
    exec "$@"
fi
echo web > "$role_file" || true

# gunicorn >= 25.1 opens a control socket under $HOME by default; the image's user has no home
# and nothing here uses gunicornc, so switch it off where the option exists.
control_socket=()
gunicorn_help="$(gunicorn --help)"
if [[ "$gunicorn_help" == *--no-control-socket* ]]; then
    control_socket=(--no-control-socket)
fi

access_log=(--access-logfile -)
if [ "${DASHBOARD_LOG_FORMAT:-text}" = "json" ]; then
    access_log=()
fi

export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-131072}"
exec gunicorn \
    --bind "${BIND_HOST:-0.0.0.0}:${PORT:-8000}" \
    --workers "${GUNICORN_WORKERS:-2}" \
    --threads "${GUNICORN_THREADS:-4}" \
    --worker-class gthread \
    --keep-alive "${GUNICORN_KEEPALIVE:-75}" \
    "${access_log[@]}" \
    --error-logfile - \
    "${control_socket[@]}" \
    "dashboard:create_app()"
