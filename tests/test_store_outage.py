"""A store outage is a clear 503, never a 500, and the dashboard carries on when the store
returns (issue 13): two gunicorn servers on a PostgreSQL store that really refuses connections."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from sqlalchemy.engine import URL

from dashboard.extensions import db
from tests.helpers import TEST_PASSWORD, add_user, make_app
from tests.servers import HttpSession, server_environ, store_refusing

PAGES = ["/", "/jobs", "/rollouts", "/history", "/audit", "/environments/dev", "/account"]


def test_a_store_outage_answers_503_everywhere_and_passes(
    tmp_path: Path, pg_store: URL, demo_folder: Path, gunicorn
):
    store = pg_store.render_as_string(hide_password=False)
    secret_key = secrets.token_hex(32)
    app = make_app(demo_folder, SQLALCHEMY_DATABASE_URI=store, SECRET_KEY=secret_key)
    add_user(app, "vera")
    with app.app_context():
        db.engine.dispose()
    env = server_environ(
        tmp_path, store=store, environments=demo_folder / "environments.yaml", secret_key=secret_key
    )
    servers = [gunicorn(env, workers=2, threads=4) for _ in range(2)]
    signed_in = HttpSession()
    signed_in.login(servers[0], "vera", TEST_PASSWORD)
    assert signed_in.get(servers[1].url("/")).status == 200
    strangers = [HttpSession() for _ in servers]
    tokens = [
        stranger.get(server.url("/login")).hidden_input("csrf_token")
        for stranger, server in zip(strangers, servers, strict=True)
    ]

    with store_refusing(pg_store):
        for server, stranger, token in zip(servers, strangers, tokens, strict=True):
            for path in PAGES:
                reply = signed_in.get(server.url(path))
                assert reply.status == 503, (path, reply.status, reply.text[:300])
                assert "The store is unreachable" in reply.text
                assert "not currently accepting connections" in reply.text
            # Not signed in: the sign-in page needs no store; signing in does.
            form = {"username": "vera", "password": TEST_PASSWORD, "csrf_token": token}
            reply = stranger.post(server.url("/login"), form)
            assert reply.status == 503 and "The store is unreachable" in reply.text
            fragment = signed_in.request("GET", server.url("/"), headers={"HX-Request": "true"})
            assert fragment.status == 503 and "<html" not in fragment.text
            health = signed_in.get(server.url("/readyz"))
            assert health.status == 503
            assert "not currently accepting connections" in json.loads(health.text)["store"]
        logs = "".join(server.output() for server in servers)
        assert "Internal Server Error" not in logs and "Traceback" not in logs

    # The store is back: the same session works on both servers, on connections made anew.
    for server in servers:
        assert signed_in.get(server.url("/")).status == 200
        assert signed_in.get(server.url("/readyz")).status == 200
