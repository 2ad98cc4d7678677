#!/usr/bin/env bash
# Container entry point for the migration dashboard.
#
# 1. `flask db upgrade` brings the dashboard's OWN store (DASHBOARD_DATABASE_URL, default
#    instance/dashboard.db) up to date from the top-level migrations/ folder. It never touches
#    the target databases listed in environments.yaml.
# 2. With arguments, exec them (docker convention: `docker run IMAGE flask dashboard status`);
#    without, exec gunicorn serving "dashboard:create_app()".
#
# `flask` and `gunicorn` are taken from PATH. Settings (all optional):
#   BIND_HOST          address to bind (default 0.0.0.0)
#   PORT               port to bind (default 8000)
#   GUNICORN_WORKERS   worker processes (default 2)
#   GUNICORN_THREADS   threads per worker (default 4); one process of the whole deployment (the
#                      holder of a lease in the store) reads the statuses, every worker shows them
#   GUNICORN_CMD_ARGS  any further gunicorn options (read by gunicorn itself)
set -euo pipefail

export FLASK_APP="${FLASK_APP:-dashboard}"

echo "entrypoint: upgrading the dashboard's own store (flask db upgrade)" >&2
flask db upgrade

if [ $# -gt 0 ]; then
    exec "$@"
fi

# gunicorn >= 25.1 opens a control socket under $HOME by default; the image's user has no home
# and nothing here uses gunicornc, so switch it off where the option exists.
control_socket=()
gunicorn_help="$(gunicorn --help)"
if [[ "$gunicorn_help" == *--no-control-socket* ]]; then
    control_socket=(--no-control-socket)
fi

exec gunicorn \
    --bind "${BIND_HOST:-0.0.0.0}:${PORT:-8000}" \
    --workers "${GUNICORN_WORKERS:-2}" \
    --threads "${GUNICORN_THREADS:-4}" \
    --worker-class gthread \
    --access-logfile - \
    --error-logfile - \
    "${control_socket[@]}" \
    "dashboard:create_app()"
