"""Everything that touches a target database, and the only code that imports Alembic.

- `adapter`: revision graphs, current revisions, resolving targets, running Alembic commands
  and rendering offline SQL (Alembic's errors become ours here);
- `engines`: the one way to open a target engine (bounded connect, small pools);
- `locks`: the migration lock held in the target database itself;
- `runner` and `renderer`: the child processes that migrate and render, behind one launcher.
"""
