"""Which parametrized cases of a test run by default and which only under ``-m slow``."""
from __future__ import annotations

from collections.abc import Collection, Iterable

import pytest


def slow_unless(names: Iterable[str], default: Collection[str]) -> list:
    """``names`` as pytest params (id = the name): those in ``default`` run in the default
    run, the others are marked ``slow``."""
    return [pytest.param(n, marks=[] if n in default else [pytest.mark.slow], id=n) for n in names]
