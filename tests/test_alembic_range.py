"""Pin the Alembic range whose private step functions the adapter wraps (in one place)."""

from __future__ import annotations

import tomllib
from importlib.metadata import version

from packaging.requirements import Requirement

from dashboard.target import adapter as alembic_adapter
from tests.helpers import REPO


def declared_alembic() -> Requirement:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return next(Requirement(line) for line in project["dependencies"] if line.startswith("alembic"))


def test_the_installed_alembic_is_in_the_declared_range_which_has_an_upper_bound():
    requirement = declared_alembic()
    assert any(spec.operator == "<" for spec in requirement.specifier), requirement
    assert requirement.specifier.contains(version("alembic")), (requirement, version("alembic"))


def test_the_private_step_functions_resolve_upgrades_and_downgrades(merge_script_tree):
    script = alembic_adapter._script_directory(merge_script_tree.path)

    def ids(direction: str, target: str, current: tuple[str, ...]) -> list[str]:
        steps = alembic_adapter._migration_steps(script, direction, target, current)
        return [step.revision.revision for step in steps]

    everything = ids("upgrade", "heads", ())
    assert everything[0] == "a1" and everything[-2:] == ["m4", "d5"]
    assert sorted(everything[1:3]) == ["b2", "c3"]
    assert ids("upgrade", "+1", ("m4",)) == ["d5"]
    assert ids("downgrade", "-1", ("d5",)) == ["d5"]
    assert ids("downgrade", "base", ("b2",)) == ["b2", "a1"]
