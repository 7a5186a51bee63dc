"""Barbican's KMIP store under a threaded API server (a real Barbican bug, xfail strict)."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from harness.known_bugs import known_bug
from tests.conftest import topology

pytestmark = pytest.mark.integration


@pytest.mark.xdist_group("kmip-threaded")
@known_bug("kmip-shared-client-threads")
def test_concurrent_kmip_reads_on_a_threaded_node_all_succeed(barbican_env_pool, tmp_path):
    topo = yaml.safe_load(topology("kmip").read_text())
    topo.update(name="kmip-threaded", barbican={"nodes": 1, "processes": 1, "threads": 4})
    path = tmp_path / "kmip-threaded.yaml"
    path.write_text(yaml.safe_dump(topo))
    env = barbican_env_pool.get(path)
    client = env.barbican()
    refs = [client.secrets.create(payload=secrets.token_bytes(16)).store() for _ in range(4)]

    def read(ref):
        r = env.session().get(ref + "/payload", raise_exc=False, timeout=15,
                              headers={"Accept": "application/octet-stream"})
        return r.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(read, refs * 10))
    assert statuses == [200] * len(statuses), f"{statuses.count(500)} of {len(statuses)} reads failed"
