"""The incident catalog (scenarios/*.yaml), one test per scenario and provider, so CI gates
on it.

Each scenario: seed through the ledger, run the fault timeline while probing, heal,
verify. Passes when the triage verdict, its timing, the ledger outcome and the health
after heal all match the scenario's expectations. The expectations are exact, so the
catalog passing on both providers means the same verdicts from the same topology files
as local processes and as Docker containers. Scenarios of one topology and provider
share one environment per xdist worker (they are grouped by topology and provider).

`--scenario-providers local` runs the local half only (default: local,docker). Docker
without a reachable daemon skips that half, or fails it under CI=true."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.providers import DEFAULT_PROVIDER, PROVIDERS
from harness.pytest_plugin import require_docker
from harness.runner import run_scenario
from harness.scenario import load_scenario

SCENARIOS = sorted((Path(__file__).resolve().parents[2] / "scenarios").glob("*.yaml"))


def pytest_generate_tests(metafunc):
    if "scenario_file" not in metafunc.fixturenames:
        return
    chosen = [p.strip() for p in metafunc.config.getoption("--scenario-providers").split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(PROVIDERS))
    if unknown:
        raise pytest.UsageError(f"--scenario-providers: unknown {', '.join(unknown)}; "
                                f"providers: {', '.join(PROVIDERS)}")
    params = []
    for provider in chosen:
        for path in SCENARIOS:
            scenario = load_scenario(path)
            if provider not in scenario.providers:
                continue  # e.g. a network partition needs containers to cut off
            topology = scenario.environment_path().stem
            # The local ids stay as they were (CI history); docker ones carry the provider.
            test_id = path.stem if provider == DEFAULT_PROVIDER else f"{path.stem}@{provider}"
            group = topology if provider == DEFAULT_PROVIDER else f"{topology}@{provider}"
            params.append(pytest.param(path, provider, id=test_id,
                                       marks=[pytest.mark.xdist_group(group), pytest.mark.integration]))
    metafunc.parametrize(("scenario_file", "provider"), params)


def test_catalog_is_not_empty():
    assert len(SCENARIOS) >= 20


def test_scenario(scenario_file, provider, barbican_env_pool, record_property):
    if provider == "docker":
        require_docker()
    scenario = load_scenario(scenario_file)
    env = barbican_env_pool.get(scenario.environment_path(), provider=provider)
    result = run_scenario(scenario, env=env)
    record_property("provider", provider)
    record_property("verdict", (result.observed or {}).get("category"))
    record_property("time_to_verdict_s", result.time_to_verdict_s)
    record_property("run_dir", result.run_dir)
    assert result.passed, "\n".join(result.failures) + f"\n(see {result.run_dir})"
    expected = scenario.expect.verdict
    if expected and expected.category != "healthy":
        # A verdict an operator can act on names what it saw.
        assert result.observed["evidence"], f"{expected.category} without evidence (see {result.run_dir})"
    junit = (Path(result.run_dir) / "junit.xml").read_text()
    assert f'name="scenario {scenario.name}"' in junit and 'failures="0"' in junit
    assert scenario.name in (Path(result.run_dir) / "report.html").read_text()
