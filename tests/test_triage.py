"""Triage against live environments: healthy says healthy; the CLI diagnose works on a run.
(Each catalog fault's verdict is checked by conformance/scenarios, one test per scenario.)"""

from __future__ import annotations

import json

import pytest

from harness.faults.engine import FaultEngine
from harness.triage import Diagnoser
from tests.conftest import harness_cli

pytestmark = pytest.mark.integration


@pytest.mark.xdist_group("simple-crypto")
def test_healthy_environment_is_diagnosed_healthy(env_of):
    env = env_of("simple-crypto")
    env.barbican().secrets.create(name="pre-existing", payload=b"p" * 8).store()
    v = Diagnoser(env, logs_dir=env.run_dir / "logs").diagnose()
    assert (v.category, v.incident, v.blast_radius, v.affected_nodes) == ("healthy", "none", "none", [])


@pytest.mark.xdist_group("pkcs11-softhsm")
def test_healthy_pkcs11_environment_is_diagnosed_healthy(env_of):
    env = env_of("pkcs11-softhsm")
    env.barbican().secrets.create(name="pre-existing", payload=b"p" * 8).store()
    v = Diagnoser(env, logs_dir=env.run_dir / "logs").diagnose()
    assert v.category == "healthy", v.evidence


@pytest.mark.xdist_group("simple-crypto")
def test_cli_diagnose_names_kek_mismatch_with_evidence(env_of):
    env = env_of("simple-crypto")
    env.barbican(node="barbican-1").secrets.create(name="pre-existing", payload=b"p" * 8).store()
    with FaultEngine(env).injected("kek_mismatch", {"node": "2"}):
        out = harness_cli("diagnose", "--run", env.run_id, "--json", check=True, timeout=120).stdout
    verdict = json.loads(out)
    assert verdict["category"] == "kek_mismatch_or_key_loss"
    assert verdict["incident"] == "data_loss" and verdict["blast_radius"] == "existing_secrets_at_risk"
    assert verdict["affected_nodes"] == ["barbican-2"]
    assert any("InvalidToken" in e for e in verdict["evidence"])
