"""The migration lock: the README's env.py lines take the very lock the runner takes."""

from __future__ import annotations

import re
import textwrap
import threading
import time

import pytest
import sqlalchemy as sa

from dashboard.target.locks import MYSQL_NAME_SQL, TargetLock, lock_is_free
from tests.helpers import REPO, DatabaseFactory


def readme_env_py_lines() -> str:
    """The lines the README tells a team to add to env.py."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```python\n(\s+# Take the Migration Dashboard's lock.*?)```", readme, re.S)
    assert block, "the README lost its env.py lock snippet"
    return textwrap.dedent(block.group(1))


@pytest.mark.parametrize("server", ["postgresql", "mariadb"])
def test_the_readme_env_py_lines_take_the_runners_lock(tmp_path, server):
    databases = DatabaseFactory(server, tmp_path)
    try:
        url = databases.create()
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.connect() as connection:
            exec(readme_env_py_lines(), {"connection": connection})  # noqa: S102
            assert not lock_is_free(url=url, version_table="alembic_version", schema=None)
            runner_lock = TargetLock(url=url)
            assert runner_lock.try_acquire() is False
            runner_lock.release()
        engine.dispose()
        # The terminal's session ended, so the lock is free again.
        assert lock_is_free(url=url, version_table="alembic_version", schema=None)
    finally:
        databases.drop_all()


def test_the_readme_mysql_lines_stop_when_get_lock_is_not_granted(tmp_path):
    databases = DatabaseFactory("mariadb", tmp_path)
    try:
        url = databases.create()
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.connect() as holder, engine.connect() as waiter, engine.connect() as admin:
            exec(readme_env_py_lines(), {"connection": holder})  # noqa: S102  the terminal's
            waiter_id = waiter.scalar(sa.text("SELECT CONNECTION_ID()"))
            outcome: dict[str, str] = {}

            def second_terminal() -> None:
                try:
                    exec(readme_env_py_lines(), {"connection": waiter})  # noqa: S102
                    outcome["ended"] = "the lines returned: env.py would migrate"
                except SystemExit as stop:
                    outcome["ended"] = f"stopped: {stop}"

            thread = threading.Thread(target=second_terminal)
            thread.start()
            waiting = sa.text(
                "SELECT count(*) FROM information_schema.PROCESSLIST "
                "WHERE ID = :id AND INFO LIKE 'SELECT GET_LOCK(%'"
            )
            deadline = time.monotonic() + 10
            while not admin.scalar(waiting, {"id": waiter_id}):
                assert time.monotonic() < deadline, "the second run never asked for the lock"
                time.sleep(0.05)
                admin.rollback()
            # GET_LOCK returns NULL, not 1, when its wait is interrupted (as on a timeout: 0).
            admin.exec_driver_sql(f"KILL QUERY {int(waiter_id)}")
            thread.join(timeout=10)

            assert not thread.is_alive()
            assert outcome["ended"].startswith("stopped: Another migration of this database")
            assert "try again when it has finished" in outcome["ended"]
            # The first run still holds it; the second, stopped, never took it.
            holder_id = holder.scalar(sa.text("SELECT CONNECTION_ID()"))
            used_by = sa.text(f"SELECT IS_USED_LOCK({MYSQL_NAME_SQL})")
            assert waiter.scalar(used_by, {"table": "alembic_version"}) == holder_id
        engine.dispose()
    finally:
        databases.drop_all()


def test_sqlite_lock_is_a_file_lock_per_database_and_version_table(tmp_path):
    url = sa.make_url(f"sqlite:///{tmp_path / 'app.db'}")
    with TargetLock(url=url) as held:
        assert held.try_acquire()
        assert not lock_is_free(url=url, version_table="alembic_version", schema=None)
        assert lock_is_free(url=url, version_table="other_version", schema=None)
    assert lock_is_free(url=url, version_table="alembic_version", schema=None)
