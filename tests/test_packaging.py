"""constraints.txt pins every package pyproject.toml asks for, so both set-up commands install the same versions
on every machine (a dependency added to pyproject.toml without `./dev lock` would be installed unpinned)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def pinned() -> dict[str, str]:
    pins: dict[str, str] = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.fullmatch(line.strip())
        assert match, f"constraints.txt line {number} is not name==version: {line!r}"
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def test_every_dependency_of_pyproject_is_pinned() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    for extra in ("test", "bedrock"):  # what ./dev test installs
        wanted += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pins = pinned()
    missing = sorted({r.name for r in wanted if canonicalize_name(r.name) not in pins})
    assert not missing, f"not in constraints.txt (run ./dev lock): {missing}"
    outside = sorted(f"{r.name}=={pins[canonicalize_name(r.name)]} (pyproject: {r.specifier})"
                     for r in wanted if not r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True))
    assert not outside, f"constraints.txt pins versions pyproject.toml does not allow (run ./dev lock): {outside}"
