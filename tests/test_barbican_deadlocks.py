"""Barbican under concurrent writes on MariaDB (the database Kolla deploys)."""

from __future__ import annotations

import secrets as _rand
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.known_bugs import known_bug
from tests.faults_support import log_of

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("simple-crypto")]


@known_bug("metadata-put-deadlock")
def test_concurrent_metadata_puts_on_different_secrets_all_succeed(env_of):
    env = env_of("simple-crypto")
    client = env.barbican()
    refs = [client.secrets.create(name=f"metadata-{i}", payload=b"m" * 16).store() for i in range(16)]
    before = {n.name: log_of(env, n.name) for n in env.nodes}
    session = env.session()

    def put(i: int) -> int:
        node = env.nodes[i % len(env.nodes)]
        url = node.url + "/v1/" + refs[i % len(refs)].split("/v1/", 1)[1] + "/metadata"
        body = {"metadata": {"owner": _rand.token_hex(4), "attempt": str(i)}}
        return session.put(url, json=body, raise_exc=False, timeout=30).status_code

    try:
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(put, range(400)))
        deadlocks = sum(log_of(env, n).count("DBDeadlock", len(before[n])) for n in before)
    finally:
        for ref in refs:
            session.delete(ref, raise_exc=False, timeout=15)
    assert codes.count(201) == len(codes), (
        f"{codes.count(500)} of {len(codes)} metadata PUTs answered 500; {deadlocks} DBDeadlock log lines")
