"""pytest plugin (entry point `barbican_harness`).

Options:
  --barbican-env PATH      bring up the topology PATH (one environment per xdist worker)
  --barbican-run RUN_ID    use an environment that is already up (`barbican-harness up`)
  --barbican-source SRC    the Barbican build environments come up on (pypi:, wheel:, sdist:, git:)
  --barbican-cloud NAME    an existing cloud from clouds.yaml
  --barbican-targets FILE  users per role for that cloud (see harness.targets)
  --soak                   also run the long tests marked `soak`
  --scenario-providers P   providers the scenario catalog runs on (default local,docker)

Sharing rule under pytest-xdist: environments are never shared between workers. Each
worker brings up at most one environment per topology file, on first use, and tears it
down when its session ends; tests of one worker that use the same topology share it.
(`--barbican-run` is the exception: every worker uses that one running environment.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.providers import PROVIDERS


def pytest_addoption(parser):
    group = parser.getgroup("barbican-harness")
    group.addoption("--barbican-env", default=os.environ.get("BARBICAN_HARNESS_ENV"),
                    help="Topology file to bring up for the tests")
    group.addoption("--barbican-run", default=None, help="Run id of an environment already up")
    group.addoption("--barbican-source", default=os.environ.get("BARBICAN_HARNESS_SOURCE"),
                    help="Barbican build of the environments the tests bring up: pypi:VERSION, wheel:PATH, "
                         "sdist:PATH or git:PATH[@REF] (default: each topology's, else the harness's)")
    group.addoption("--barbican-cloud", default=None, help="Existing cloud (clouds.yaml name)")
    group.addoption("--barbican-targets", default=None, help="Targets file naming a cloud per role")
    group.addoption("--soak", action="store_true", default=False, help="Run long soak tests too")
    group.addoption("--scenario-providers", default=",".join(PROVIDERS),
                    help=f"Providers to run the scenario catalog on (comma-separated: {', '.join(PROVIDERS)})")


def pytest_configure(config):
    config.addinivalue_line("markers", "soak: long runs, only with --soak")
    config.addinivalue_line("markers", "integration: needs real services")
    config.addinivalue_line("markers", "topology(path): the topology file this test needs")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="soak test: run with --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


class EnvironmentPool:
    """At most one environment per (topology file, provider) for this process (this xdist
    worker). provider=None means the one the topology file names (local by default)."""

    def __init__(self, barbican: str | None = None):
        self._envs: dict[tuple[Path, str], object] = {}
        self.barbican = barbican  # the build every environment of the pool runs

    def get(self, topology: str | Path, provider: str | None = None):
        from harness.environment import Environment

        from harness.topology import load_topology

        path = Path(topology).resolve()
        # None and the file's own provider are the same environment: one, not two.
        key = (path, provider or load_topology(path).provider)
        if key not in self._envs:
            try:
                self._envs[key] = Environment.up(path, provider=key[1], barbican=self.barbican)
            except HarnessError as exc:
                where = f" on the {provider} provider" if provider else ""
                pytest.fail(f"environment {topology}{where} did not come up: {exc}", pytrace=False)
        return self._envs[key]

    def close(self):
        errors = []
        for env in self._envs.values():
            try:
                env.down()
            except Exception as exc:  # noqa: BLE001 - tear down the others anyway
                errors.append(exc)
        self._envs.clear()
        if errors:
            raise errors[0]


def require_docker():
    """A Docker SDK client, or the test is skipped; under CI=true it fails instead, since
    CI machines are meant to have a daemon and a skip there would hide a whole provider."""
    from harness import images

    try:
        return images.docker_client()
    except HarnessError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the Docker tests cannot run: {exc}", pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def docker_client():
    return require_docker()


@pytest.fixture(scope="session")
def barbican_env_pool(request):
    pool = EnvironmentPool(request.config.getoption("--barbican-source"))
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def barbican_env(request, barbican_env_pool):
    """The target under test: an Environment, or a CloudTarget for an existing cloud."""
    opt = request.config.getoption
    if opt("--barbican-cloud"):
        from harness.targets import CloudTarget

        try:
            return CloudTarget.load(opt("--barbican-cloud"), opt("--barbican-targets"))
        except HarnessError as exc:
            pytest.fail(str(exc), pytrace=False)
    if opt("--barbican-run"):
        from harness.environment import Environment

        return Environment.attach(opt("--barbican-run"))
    marker = request.node.get_closest_marker("topology") if hasattr(request, "node") else None
    path = opt("--barbican-env") or (marker.args[0] if marker else None)
    if not path:
        pytest.skip("no target: pass --barbican-env PATH, --barbican-run ID or --barbican-cloud NAME")
    return barbican_env_pool.get(path)


@pytest.fixture
def barbican_client(barbican_env):
    """Factory: barbican_client(role=None, node=None, microversion=None) → barbicanclient."""

    def make(role: str | None = None, node=None, microversion: str | None = None):
        return barbican_env.barbican(role=role, node=node, microversion=microversion)

    return make
