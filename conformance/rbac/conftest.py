"""Fixtures of the RBAC conformance suite.

`target` — the Barbican under test — normally comes from conformance/conftest.py. Until
that exists, a fallback is registered here as a plain plugin (not as a conftest fixture):
fixtures of a conftest win over plugin fixtures, so a `target` defined in
conformance/conftest.py (or any conftest above this directory) takes precedence and this
one is never used. The fallback is the harness plugin's `barbican_env` (--barbican-env,
--barbican-run or --barbican-cloud/--barbican-targets).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rbac_operations import Ctx, load_expected

_FALLBACK = "barbican-rbac-fallback-target"


class _FallbackTarget:
    @pytest.fixture(scope="session")
    def target(self, barbican_env):
        """Fallback target (used only when no conftest defines `target`)."""
        return barbican_env


def pytest_configure(config):
    if not config.pluginmanager.has_plugin(_FALLBACK):
        config.pluginmanager.register(_FallbackTarget(), _FALLBACK)


@pytest.fixture(scope="session")
def rbac_ctx(target):
    """Sessions, shared resources and cleanup for one target; the expected matrix of its
    policy mode is attached as `.expected`."""
    expected = load_expected(target.policy)
    ctx = Ctx(target, expected["setup"])
    ctx.expected = expected
    yield ctx
    left = ctx.close()
    if left:
        warnings.warn(f"RBAC suite could not remove {len(left)} resources: {left[:5]}", stacklevel=1)
