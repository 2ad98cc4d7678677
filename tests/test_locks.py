"""The migration lock: the README's env.py lines take the very lock the runner takes."""

from __future__ import annotations

import re
import textwrap

import pytest
import sqlalchemy as sa

from dashboard.target.locks import TargetLock, lock_is_free
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


def test_sqlite_lock_is_a_file_lock_per_database_and_version_table(tmp_path):
    url = sa.make_url(f"sqlite:///{tmp_path / 'app.db'}")
    with TargetLock(url=url) as held:
        assert held.try_acquire()
        assert not lock_is_free(url=url, version_table="alembic_version", schema=None)
        assert lock_is_free(url=url, version_table="other_version", schema=None)
    assert lock_is_free(url=url, version_table="alembic_version", schema=None)
