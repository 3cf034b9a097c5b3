"""pyproject.toml installs every package of the source tree (a plain, non-editable install
would otherwise miss a subpackage that the editable install still finds)."""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_source_package_is_listed():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    dirs = {name: ROOT / path for name, path in setup["package-dir"].items()}
    found = set()
    for top, base in dirs.items():
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            found.add(".".join((top, *rel)))
    assert found, "no package found: the check would be vacuous"
    assert found == listed, (sorted(found - listed), sorted(listed - found))
