"""requirements/lock-cpu.txt rebuilds the tested environment: every line a ``name==version`` pin (no URL or local
path a fresh machine lacks), and every dependency pyproject.toml declares, core and dev (with the extras they
pull in), pinned at a version its declared range admits."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, requires

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
LOCK = REPO / "requirements" / "lock-cpu.txt"


def pins() -> dict[str, str]:
    lines = [line.split("#", 1)[0].strip() for line in LOCK.read_text().splitlines()]
    found = {}
    for line in filter(None, lines):
        name, sep, version = line.partition("==")
        assert sep and name and " " not in line and "@" not in line and not line.startswith("-"), line
        found[canonicalize_name(name)] = version
    return found


def declared() -> list[Requirement]:
    """pyproject.toml's core and dev requirements; the project's own extras (grace-lit[jd-solvers]) expanded."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    todo, found = [*project["dependencies"], *extras["dev"]], []
    while todo:
        requirement = Requirement(todo.pop())
        if canonicalize_name(requirement.name) == canonicalize_name(project["name"]):
            todo += [r for extra in requirement.extras for r in extras[extra]]
        else:
            found.append(requirement)
    return found


def test_the_lock_pins_every_declared_dependency_at_an_admitted_version():
    locked = pins()
    assert locked["torch"] == "2.13.0+cpu"  # the CPU build the header's --extra-index-url serves
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is not pinned in {LOCK.name}"
        assert requirement.specifier.contains(Version(locked[name]), prereleases=True), (requirement, locked[name])


def test_the_lock_pins_what_the_declared_extras_of_a_dependency_pull_in():
    """torchjd[quadprog-projector], torchjd[cagrad,nash-mtl]: the packages its metadata names for those extras."""
    locked = pins()
    for requirement in (r for r in declared() if r.extras):
        try:
            metadata = [Requirement(r) for r in requires(requirement.name) or []]
        except PackageNotFoundError:
            pytest.fail(f"{requirement.name} is not installed here: its extras cannot be read")
        pulled = [r for r in metadata if r.marker is not None
                  and any(r.marker.evaluate({"extra": extra}) for extra in requirement.extras)]
        assert pulled, requirement
        for r in pulled:
            assert canonicalize_name(r.name) in locked, f"{r} (from {requirement}) is not pinned in {LOCK.name}"
