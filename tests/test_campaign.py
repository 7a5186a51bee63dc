"""The README's main job, end to end: the quick campaign on the embedded local environment."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from harness.pytest_plugin import require_docker
from tests.conftest import harness_cli

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]  # both providers, all steps

FOUR = {"kek-mismatch-one-node", "hsm-latency-500ms", "hsm-wrong-pin-restart", "acl-removed-octavia"}


@pytest.mark.parametrize("provider", [
    pytest.param("local", marks=pytest.mark.xdist_group("campaign")),
    pytest.param("docker", marks=pytest.mark.xdist_group("campaign@docker")),
])
def test_quick_campaign_end_to_end(tmp_path, provider, record_property):
    if provider == "docker":
        require_docker()
    env = {**os.environ, "BARBICAN_HARNESS_REPORTS": str(tmp_path)}
    start = time.monotonic()
    proc = harness_cli("campaign", "--profile", "quick", "--provider", provider, env=env, timeout=1500)
    wall = time.monotonic() - start
    runs = sorted((tmp_path / "runs").glob("campaign-quick-*/campaign.json"))
    assert runs, proc.stdout + proc.stderr
    result = json.loads(runs[-1].read_text())
    record_property("campaign_wall_s", round(wall))
    assert result["provider"] == provider
    incidents = {i["incident"]: i for i in result["incidents"]}
    assert set(incidents) == FOUR
    for name, i in incidents.items():
        assert i["passed"], f"{name}: {i['failures']}"
        assert i["observed"]["category"] == i["expected"]["category"]
        assert i["ledger_ok"] is True
    assert incidents["kek-mismatch-one-node"]["outage_or_data_loss"] == "data_loss"
    assert incidents["hsm-wrong-pin-restart"]["outage_or_data_loss"] == "outage"
    assert set(result["round_trips"]) == {"simple-crypto", "pkcs11-softhsm"}
    assert proc.returncode == (0 if result["passed"] else 1)
    assert proc.returncode == 0, "\n".join(result["failures"])
    # The load's window is judged: outside it a healthy environment must answer (checked).
    verdicts = result["load"]["summary"]["verdicts"]
    assert [v["threshold"]["label"] for v in verdicts] == ["max-error-ratio outside:Aggregated=0.01"]
    assert sum(c["requests"] for c in verdicts[0]["checks"]) > 0
    html = Path(result["report"]).read_text()
    for name in FOUR:
        assert name in html
