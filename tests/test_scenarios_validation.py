"""Scenario files are checked before anything starts (pure logic: no service runs)."""

from __future__ import annotations

import pytest

from harness.errors import TopologyError
from harness.scenario import load_scenario
from tests.conftest import ENVIRONMENTS, REPO, harness_cli

GOOD = f"""
name: t
environment: {ENVIRONMENTS / 'simple-crypto.yaml'}
timeline:
  - {{at: 1, fault: kek_mismatch, params: {{node: "2"}}, heal_at: 5}}
"""


def write(tmp_path, text):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


def test_every_shipped_scenario_validates():
    proc = harness_cli("scenario", "validate", str(REPO / "scenarios"), check=True)
    assert proc.stdout.count("ok ") >= 20


def test_unknown_fault_is_rejected_naming_the_known_ones(tmp_path):
    p = write(tmp_path, GOOD.replace("kek_mismatch", "kek_mismach"))
    msg = str(pytest.raises(TopologyError, load_scenario, p).value)
    assert str(p) in msg and "timeline.0.fault" in msg
    assert "unknown fault 'kek_mismach'" in msg and "kek_mismatch" in msg


def test_negative_time_is_rejected(tmp_path):
    p = write(tmp_path, GOOD.replace("at: 1,", "at: -3,"))
    msg = str(pytest.raises(TopologyError, load_scenario, p).value)
    assert "timeline.0.at" in msg and "greater than or equal to 0" in msg


def test_heal_before_inject_is_rejected(tmp_path):
    p = write(tmp_path, GOOD.replace("heal_at: 5", "heal_at: 0.5"))
    assert "must come after" in str(pytest.raises(TopologyError, load_scenario, p).value)


def test_bad_fault_parameter_and_seed_reference(tmp_path):
    p = write(tmp_path, GOOD.replace("{node: \"2\"}", "{nod: \"2\"}"))
    assert "nod" in str(pytest.raises(TopologyError, load_scenario, p).value)
    p = write(tmp_path, GOOD.replace("kek_mismatch, params: {node: \"2\"}",
                                     "acl_removal, params: {ref: \"@tls_container[3]\"}"))
    assert "seeds 1 tls_container" in str(pytest.raises(TopologyError, load_scenario, p).value)


def test_fault_needing_another_backend_is_rejected(tmp_path):
    p = write(tmp_path, GOOD.replace("kek_mismatch, params: {node: \"2\"}", "hsm_token_absent"))
    assert "needs a secret store on backend 'pkcs11'" in str(pytest.raises(TopologyError, load_scenario, p).value)


def test_cli_rejects_before_any_service_starts(tmp_path):
    p = write(tmp_path, GOOD.replace("kek_mismatch", "no_such_fault"))
    import os

    env = {**os.environ, "BARBICAN_HARNESS_REPORTS": str(tmp_path / "reports")}
    proc = harness_cli("run", str(p), env=env, timeout=60)
    assert proc.returncode == 2 and "unknown fault 'no_such_fault'" in proc.stderr
    assert not (tmp_path / "reports").exists()


def test_rng_seed_reaches_the_shim_rules_of_faults_with_random_draws():
    from harness.faults.engine import make_fault
    from harness.timeline import seeded_params as _with_seed

    params = _with_seed("hsm_error", {"probability": 0.5}, 41)
    assert params["seed"] == 41
    assert make_fault("hsm_error", params).rules()[0].to_line().endswith("seed=41")
    assert _with_seed("hsm_latency", {"jitter": 5, "seed": 3}, 41)["seed"] == 3   # the file's own wins
    assert "seed" not in _with_seed("kek_mismatch", {"node": "2"}, 41)             # nothing random there
