"""`barbican-harness report RUN_ID` for a scenario run and a campaign (no services needed:
the report is built from the run directory's files)."""

from __future__ import annotations

import json
import os

from harness.report.verdicts import Check, VerdictFile
from tests.conftest import harness_cli


def test_report_of_a_scenario_id_names_its_verdict_in_html_allure_and_junit(tmp_path):
    run = tmp_path / "runs" / "scenario-db-down-20261204-000000-abcd"
    run.mkdir(parents=True)
    VerdictFile("scenario", "db-down", False, ["verdict: expected backend_outage, observed healthy"], [
        Check("scenario", "db-down", False, "verdict: expected backend_outage, observed healthy",
              {"scenario": "db-down", "result": "FAIL"})]).write(run)
    env = {**os.environ, "BARBICAN_HARNESS_REPORTS": str(tmp_path)}
    out = harness_cli("report", run.name, env=env, check=True).stdout
    assert out.strip().endswith("report.html")
    assert "db-down" in (run / "report.html").read_text()
    junit = (run / "junit.xml").read_text()
    assert 'name="scenario db-down"' in junit and 'failures="1"' in junit
    assert "expected backend_outage, observed healthy" in junit
    results = [json.loads(p.read_text()) for p in (run / "allure-results").glob("*-result.json")]
    assert [(r["name"], r["status"]) for r in results] == [("scenario db-down", "failed")]


def test_report_of_a_campaign_has_one_case_per_incident(tmp_path):
    run = tmp_path / "runs" / "campaign-quick-20261204-000000-abcd"
    run.mkdir(parents=True)
    VerdictFile("campaign", "quick (local)", False, ["incident acl-removed-octavia: ..."], [
        Check("incident", "kek-mismatch-one-node", True, "expected a, observed a", {"expected": "a", "result": "PASS"}),
        Check("incident", "acl-removed-octavia", False, "expected b, observed c", {"expected": "b", "result": "FAIL"}),
    ]).write(run)
    env = {**os.environ, "BARBICAN_HARNESS_REPORTS": str(tmp_path)}
    harness_cli("report", run.name, env=env, check=True)
    junit = (run / "junit.xml").read_text()
    assert 'tests="2"' in junit and 'failures="1"' in junit
    assert 'name="incident acl-removed-octavia"' in junit
