"""The incident catalog (scenarios/*.yaml), one test per scenario, so CI gates on it.

Each scenario: seed through the ledger, run the fault timeline while probing, heal,
verify. Passes when the triage verdict, its timing, the ledger outcome and the health
after heal all match the scenario's expectations. Scenarios of one topology share one
environment per xdist worker (grouped by topology)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.runner import run_scenario
from harness.scenario import load_scenario

SCENARIOS = sorted((Path(__file__).resolve().parents[2] / "scenarios").glob("*.yaml"))


def pytest_generate_tests(metafunc):
    if "scenario_file" in metafunc.fixturenames:
        params = []
        for path in SCENARIOS:
            topology = load_scenario(path).environment_path().stem
            params.append(pytest.param(path, id=path.stem, marks=[pytest.mark.xdist_group(topology),
                                                                  pytest.mark.integration]))
        metafunc.parametrize("scenario_file", params)


def test_catalog_is_not_empty():
    assert len(SCENARIOS) >= 20


def test_scenario(scenario_file, barbican_env_pool, record_property):
    scenario = load_scenario(scenario_file)
    env = barbican_env_pool.get(scenario.environment_path())
    result = run_scenario(scenario, env=env)
    record_property("time_to_verdict_s", result.time_to_verdict_s)
    record_property("run_dir", result.run_dir)
    assert result.passed, "\n".join(result.failures) + f"\n(see {result.run_dir})"
