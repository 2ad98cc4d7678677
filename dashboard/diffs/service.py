"""Diffs: the schema a plan leaves behind, compared with the one it starts from.

Schema diffs build a scratch database (seconds on a server, minutes for a long history), so
they are cached per environment dialect, revision pair and script-directory signature: an edited
script is a new key. The cache holds the app's DIFF_CACHE_SIZE diffs (least recently used go).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping

from cachetools import LRUCache
from flask import current_app, has_app_context

from dashboard.environments.loader import Environment, Project
from dashboard.errors import PlanError
from dashboard.plans.service import Plan, build_plan
from dashboard.progress import Progress
from dashboard.schema import SchemaDiff, diff_revisions
from dashboard.target import adapter as alembic_adapter
from dashboard.target.adapter import RevisionGraph

DEFAULT_DIFF_CACHE_SIZE = 64
_diff_caches: dict[int, LRUCache] = {}  # one per cache size asked for (one app: one)
_diff_cache_lock = threading.Lock()


def _diff_cache() -> LRUCache:
    """This process's schema-diff cache, sized by the app's DIFF_CACHE_SIZE."""
    size = DEFAULT_DIFF_CACHE_SIZE
    if has_app_context():
        size = int(current_app.config.get("DIFF_CACHE_SIZE", DEFAULT_DIFF_CACHE_SIZE))
    with _diff_cache_lock:
        cache = _diff_caches.get(size)
        if cache is None:
            cache = _diff_caches[size] = LRUCache(maxsize=max(size, 1))
        return cache


def plan_request_key(
    *,
    project: Project,
    environment: Environment,
    args: Mapping[str, str],
    known_current: tuple[str, ...] | None,
) -> str:
    """Name the plan a request asks for without planning it: what was asked, the script
    directory's signature (every script's and env.py's size and mtime) and the revisions the
    environment was last read at (`known_current`, None when not read yet or not needed).

    Two requests for the same plan get the same key at once; the plan itself (and whether it is
    still the one a page showed) is worked out by the task.
    """
    signature = alembic_adapter.script_signature(project.script_location)
    described = json.dumps(
        {
            "args": dict(sorted(args.items())),
            "dialect": environment.dialect,
            "scripts": hashlib.sha256(repr(signature).encode()).hexdigest(),
            "current": sorted(known_current) if known_current is not None else None,
        },
        sort_keys=True,
    )
    return "request:" + hashlib.sha256(described.encode()).hexdigest()


def heads_of(*, graph: RevisionGraph, revisions: set[str]) -> tuple[str, ...]:
    """Return the revisions of `revisions` that no other revision of the set builds on."""
    heads = []
    for revision_id in revisions:
        revision = graph.get(revision_id)
        if revision is not None and not set(revision.next_revisions) & revisions:
            heads.append(revision_id)
    return tuple(sorted(heads))


def revisions_after(
    *,
    graph: RevisionGraph,
    from_revisions: tuple[str, ...],
    direction: str,
    revision_ids: list[str] | tuple[str, ...],
) -> tuple[str, ...]:
    """Return the revisions the database records once these steps have run."""
    applied = graph.ancestors(from_revisions)
    if direction == "upgrade":
        applied |= set(revision_ids)
    else:
        applied -= set(revision_ids)
    return heads_of(graph=graph, revisions=applied)


def schema_diff(
    *,
    project: Project,
    environment: Environment,
    from_revisions: tuple[str, ...],
    to_revisions: tuple[str, ...],
    progress: Progress | None = None,
) -> SchemaDiff:
    """Compare the schemas at two sets of revisions on `environment`'s dialect (cached)."""
    key = (
        environment.dialect,
        environment.version_table,
        environment.python_path,
        project.script_location,
        tuple(sorted(from_revisions)),
        tuple(sorted(to_revisions)),
        alembic_adapter.script_signature(project.script_location),
    )
    cache = _diff_cache()
    with _diff_cache_lock:
        cached = cache.get(key)
    if cached is not None:
        return cached
    diff = diff_revisions(
        project=project,
        environment=environment,
        from_revision=tuple(from_revisions),
        to_revision=tuple(to_revisions),
        progress=progress,
    )
    with _diff_cache_lock:
        cache[key] = diff
    return diff


def steps_schema_diff(
    *,
    project: Project,
    environment: Environment,
    from_revisions: tuple[str, ...],
    direction: str,
    revision_ids: list[str] | tuple[str, ...],
    progress: Progress | None = None,
) -> SchemaDiff:
    """Compare the schema before these steps with the schema after them."""
    graph = alembic_adapter.load_graph(
        project.script_location, environment.python_path, environment.alembic_ini
    )
    return schema_diff(
        project=project,
        environment=environment,
        from_revisions=tuple(from_revisions),
        to_revisions=revisions_after(
            graph=graph,
            from_revisions=tuple(from_revisions),
            direction=direction,
            revision_ids=revision_ids,
        ),
        progress=progress,
    )


def plan_schema_diff(
    *, project: Project, environment: Environment, plan: Plan, progress: Progress | None = None
) -> SchemaDiff:
    """Compare the schema before `plan` with the schema after it (one scratch database).

    `progress` hears "building the scratch database: step i of N" as the build goes.
    """
    return steps_schema_diff(
        project=project,
        environment=environment,
        from_revisions=plan.from_revisions,
        direction=plan.direction,
        revision_ids=plan.revision_ids,
        progress=progress,
    )


def revision_plan(
    *,
    project: Project,
    environment: Environment,
    from_revision: str,
    to_revision: str,
    render: bool = True,
) -> Plan:
    """Plan the way from one revision to another on `environment`'s dialect (upgrade or down)."""
    graph = alembic_adapter.load_graph(
        project.script_location, environment.python_path, environment.alembic_ini
    )
    start, end = (
        alembic_adapter.resolve_revisions(project.database(environment), text)
        for text in (from_revision, to_revision)
    )
    if len(end) > 1:
        raise PlanError(f"{to_revision} names several revisions ({', '.join(end)}): name one")
    if start == end:
        raise PlanError("Pick two different revisions to compare.")
    if set(start) <= graph.ancestors(end):
        direction, target = "upgrade", end[0] if end else "base"
    elif set(end) <= graph.ancestors(start):
        direction, target = "downgrade", end[0] if end else "base"
    else:
        raise PlanError(
            f"{from_revision} and {to_revision} are on different branches: neither is an "
            "ancestor of the other. Compare each with their merge or a common ancestor."
        )
    # Planning from a given revision renders offline: the environment's database is not read.
    return build_plan(
        project=project,
        environment=environment,
        direction=direction,
        target=target,
        current=start,
        render=render,
    )
