"""The suite's own scheduling: under ``--dist loadgroup`` each test is tagged with its group.

pytest-xdist reads the groups tests/conftest.py sets from a suffix it writes into the node
id; with a pytest that no longer lets it (9.2, pytest-xdist issue 1386) every group is
silently ignored, module-scoped stacks are built once per worker and the torch modules
train side by side. This fails instead.
"""

from __future__ import annotations

import pytest


def test_this_test_runs_in_its_modules_group(request: pytest.FixtureRequest) -> None:
    if not request.config.getvalue("loadgroup"):
        pytest.skip("not run with --dist loadgroup")
    assert request.node.nodeid.endswith("@test_suite_groups"), request.node.nodeid
