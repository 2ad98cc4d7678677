"""/healthz says the process serves; /readyz says whether it can work: its store answers and,
with the RQ executor, its Redis does — 503 naming what does not (issue 16)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from dashboard.errors import ConfigurationError
from tests.helpers import make_app, require_redis, upgrade_store
from tests.servers import store_refusing


def unreachable_store(port: int) -> str:
    return f"postgresql+psycopg://dash:hunter2-secret@127.0.0.1:{port}/x"


def test_healthz_answers_while_the_store_is_unreachable(demo_folder: Path, closed_port: int):
    client = make_app(demo_folder, SQLALCHEMY_DATABASE_URI=unreachable_store(closed_port))

    response = client.test_client().get("/healthz")

    assert response.status_code == 200
    assert response.get_json()["status"] == "ok"


def test_readyz_is_ok_when_the_store_answers(demo_folder: Path):
    response = make_app(demo_folder).test_client().get("/readyz")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "project": "shop", "store": "ok"}


def test_readyz_is_503_naming_an_unreachable_store_without_its_password(
    demo_folder: Path, closed_port: int
):
    app = make_app(demo_folder, SQLALCHEMY_DATABASE_URI=unreachable_store(closed_port))

    response = app.test_client().get("/readyz")

    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert str(closed_port) in body["store"] and "refused" in body["store"].lower()
    assert "hunter2-secret" not in response.get_data(as_text=True)


def test_readyz_is_503_while_a_postgresql_store_refuses_connections_and_200_after(
    demo_folder: Path, pg_store
):
    app = make_app(demo_folder, SQLALCHEMY_DATABASE_URI=pg_store.render_as_string(False))
    upgrade_store(app)
    client = app.test_client()
    assert client.get("/readyz").status_code == 200

    with store_refusing(pg_store):
        refused = client.get("/readyz")
        alive = client.get("/healthz")

    assert refused.status_code == 503
    assert "not currently accepting connections" in refused.get_json()["store"]
    assert alive.status_code == 200
    assert client.get("/readyz").status_code == 200  # a new connection, once it is back


def test_readyz_with_rq_is_ok_when_store_and_redis_answer(demo_folder: Path):
    redis_url = require_redis()
    app = make_app(
        demo_folder,
        JOB_EXECUTOR="rq",
        REDIS_URL=redis_url,
        RQ_QUEUE_PREFIX=f"test-{secrets.token_hex(6)}",
    )

    response = app.test_client().get("/readyz")

    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ok",
        "project": "shop",
        "store": "ok",
        "redis": "ok",
    }


def test_readyz_with_rq_is_503_naming_redis_that_does_not_answer(
    demo_folder: Path, closed_port: int
):
    app = make_app(
        demo_folder,
        JOB_EXECUTOR="rq",
        REDIS_URL=f"redis://:redis-secret@127.0.0.1:{closed_port}/3",
    )

    response = app.test_client().get("/readyz")

    assert response.status_code == 503
    body = response.get_json()
    assert set(body) == {"status", "redis"}  # the store answered
    assert body["status"] == "unavailable"
    assert str(closed_port) in body["redis"] and "refused" in body["redis"].lower()
    assert "redis-secret" not in response.get_data(as_text=True)
    # Liveness does not depend on it.
    assert app.test_client().get("/healthz").status_code == 200


def test_readyz_needs_no_sign_in_and_never_touches_a_target(demo_folder: Path):
    for database in (demo_folder / "demo").iterdir():
        database.unlink()

    response = make_app(demo_folder).test_client().get("/readyz")

    assert response.status_code == 200
    assert not any((demo_folder / "demo").iterdir())


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"JOB_EXECUTOR": "celery"}, "JOB_EXECUTOR must be one of thread, rq, not 'celery'"),
        ({"JOB_EXECUTOR": "rq", "REDIS_URL": None}, "JOB_EXECUTOR=rq needs REDIS_URL"),
    ],
)
def test_a_bad_executor_setting_stops_start_up_naming_it(demo_folder: Path, setting, message):
    with pytest.raises(ConfigurationError, match=message):
        make_app(demo_folder, **setting)
