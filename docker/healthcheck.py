#!/usr/bin/env python3
"""The image's HEALTHCHECK: is this container ready to work?

A web container (the default) asks its own gunicorn for /readyz: 200 when the dashboard's store
(and, with JOB_EXECUTOR=rq, Redis) answers, else 503 naming what does not. A worker container
(`docker/entrypoint.sh worker`, which notes its role in $DASHBOARD_ROLE_FILE) serves no HTTP, so
the same readiness is asked of the app in this process. Exit 0 when ready, 1 (with the reason on
stdout, which `docker inspect` shows) when not.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROLE_FILE = Path(os.environ.get("DASHBOARD_ROLE_FILE", "/tmp/migration-dashboard.role"))


def role() -> str:
    try:
        return ROLE_FILE.read_text().strip() or "web"
    except OSError:
        return "web"


def web_ready() -> tuple[bool, str]:
    url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=8) as response:
            return response.status == 200, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        with error:
            return False, error.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as error:
        return False, f"{url}: {error}"


def worker_ready() -> tuple[bool, str]:
    from dashboard import create_app

    response = create_app().test_client().get("/readyz")
    return response.status_code == 200, json.dumps(response.get_json())


def main() -> int:
    ready, said = worker_ready() if role() == "worker" else web_ready()
    print(said)
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
