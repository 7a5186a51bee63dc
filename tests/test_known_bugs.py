"""Issue 13, item 4: `barbican-harness known-bugs` on a Barbican the harness did not start.

The catalogue (harness/known_bugs/catalogue.py) and the suites' strict xfails are one
thing: checked here in pure logic, with the status aggregation. On a harness environment
used only as an existing cloud (its clouds.yaml and a targets file) on Barbican 23.0.0,
every catalogued bug the API can show is reported present, and the project's secrets,
containers, orders and quota are exactly as before; Ctrl-C undoes what the run wrote, and
`heal` what a killed run wrote (a project quota included)."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from harness.environment import runs_dir
from harness.known_bugs import BUGS, CATALOGUE, known_bug
from harness.known_bugs.probes import (ABSENT, NOT_APPLICABLE, NOT_CHECKABLE, NOT_SEEN, PRESENT, PROBES, SEEN,
                                       UNKNOWN, Observation, judge)
from harness.writes import Writes
from harness.known_bugs.run import RESULTS_FILE
from tests.conftest import CLI, REPO, harness_cli


# -- pure logic -----------------------------------------------------------------------------
def obs(*outcomes: str) -> list[Observation]:
    return [Observation(f"case {i}", o, f"evidence {i}") for i, o in enumerate(outcomes)]


@pytest.mark.parametrize("outcomes, status", [
    ((SEEN,), PRESENT),
    ((NOT_SEEN, SEEN, UNKNOWN), PRESENT),          # one case showing the bug is enough
    ((NOT_SEEN, NOT_SEEN), ABSENT),
    ((NOT_SEEN, NOT_APPLICABLE), ABSENT),          # a case the backend does not exercise is no doubt
    ((NOT_SEEN, UNKNOWN), NOT_CHECKABLE),          # absent only when every case could tell
    ((UNKNOWN,), NOT_CHECKABLE),
    ((NOT_APPLICABLE, NOT_APPLICABLE), NOT_CHECKABLE),
    ((), NOT_CHECKABLE),
])
def test_judge_aggregates_the_cases_of_a_probe(outcomes, status):
    got, evidence = judge(obs(*outcomes))
    assert got == status
    # The deciding cases come first; every case is in the evidence.
    assert len(evidence) == max(len(outcomes), 1)
    if status == PRESENT:
        assert evidence[0] == f"case {outcomes.index(SEEN)}: evidence {outcomes.index(SEEN)}"


def test_a_recorded_quota_keeps_its_prefix_open_until_restored(tmp_path):
    writes = Writes(tmp_path)
    writes.open("known-bugs-x", ["admin"], "known-bugs", ("containers", "secrets", "orders"))
    writes.quota("known-bugs-x", "project-1", "service-admin", {"secrets": 5, "orders": None})
    (rec,) = writes.open_records().values()
    assert rec["kinds"] == ["containers", "secrets", "orders"] and rec["roles"] == ["admin"]
    assert rec["quota"] == {"project": "project-1", "role": "service-admin", "original": {"secrets": 5, "orders": None}}
    writes.quota_restored("known-bugs-x")
    assert writes.open_records()["known-bugs-x"]["quota"] is None
    writes.close("known-bugs-x", {})
    assert writes.open_records() == {} and writes.open_prefixes() == {}


def test_every_bug_has_a_probe_or_says_why_it_cannot_have_one():
    for bug in BUGS:
        assert (bug.id in PROBES) != bool(bug.not_checkable), bug.id
        assert bug.pinned_by and bug.measured_in and bug.present_means and bug.title, bug.id
    assert set(PROBES) <= set(CATALOGUE)


def test_every_catalogued_bug_is_pinned_by_its_tests_through_the_catalogue():
    """The suites' xfails name catalogue ids, so their reasons cannot drift from it; every
    entry names the test files that pin it, and those files use its id."""
    for bug in BUGS:
        for node in bug.pinned_by:
            path = REPO / node.split("::")[0]
            text = path.read_text()
            uses = f'known_bug("{bug.id}"' in text
            if not uses:  # parametrized from data: the order outcomes of capabilities.yaml
                uses = f"bug: {bug.id}" in (REPO / "conformance/capabilities.yaml").read_text()
            assert uses, f"{bug.id}: {path} does not use known_bug(\"{bug.id}\")"
    # No strict xfail of the suites writes its own reason any more.
    for path in [*REPO.glob("conformance/**/*.py"), *REPO.glob("tests/*.py")]:
        assert path == Path(__file__) or "xfail(strict=True" not in path.read_text(), path


def test_known_bug_is_the_catalogues_strict_xfail():
    mark = known_bug("metadata-put-deadlock")
    assert mark.kwargs["strict"] is True
    assert mark.kwargs["reason"].startswith("Barbican bug [metadata-put-deadlock]: PUT /v1/secrets/{id}/metadata")
    with pytest.raises(KeyError, match="no known bug 'nope'.*metadata-put-deadlock"):
        known_bug("nope")


@pytest.mark.parametrize("args, says", [
    (["--cloud", "c", "--bug", "nope"], "--bug nope: no such known bug; known: metadata-put-deadlock, "),
    (["--cloud", "c", "--run", "r"], "name one target: --run or --cloud, not several"),
    (["--targets", "t.yaml", "--run", "r"], "--targets goes with --cloud"),
])
def test_usage_errors_exit_2_in_one_line_before_anything_is_written(args, says):
    from typer.testing import CliRunner

    from harness.cli import app

    runs = set(runs_dir().glob("known-bugs-*"))
    result = CliRunner().invoke(app, ["known-bugs", *args])
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {says}"), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert set(runs_dir().glob("known-bugs-*")) == runs


# -- an existing cloud on Barbican 23.0.0 -------------------------------------------------------
def cloud_of(env, tmp_path: Path) -> tuple[str, Path, dict]:
    """The environment as someone else's cloud: its clouds.yaml, and a targets file naming the
    writer, the project admin (deletes orders) and the quota admin."""
    targets = tmp_path / "targets.yaml"
    targets.write_text(yaml.safe_dump({"clouds": {role: f"{env.run_id}-{role}"
                                                  for role in ("creator", "admin", "service-admin")}}))
    return f"{env.run_id}-creator", targets, {**os.environ, "OS_CLIENT_CONFIG_FILE": env.state["clouds_yaml"]}


def project_state(env) -> dict:
    """Every secret, container and order of the writer's project (as its admin), and its quotas."""
    session = env.session("admin")
    base = env.node().url
    state = {}
    for kind in ("secrets", "containers", "orders"):
        refs, offset = set(), 0
        while True:
            body = session.get(f"{base}/v1/{kind}", params={"limit": 100, "offset": offset}, timeout=15).json()
            refs |= {item[kind[:-1] + "_ref"] for item in body[kind]}
            offset += 100
            if offset >= body["total"]:
                break
        state[kind] = refs
    quota = env.session("service-admin").get(f"{base}/v1/project-quotas/{session.get_project_id()}",
                                             raise_exc=False, timeout=15)
    state["project-quotas"] = (quota.status_code, quota.text)
    return state


@pytest.mark.integration
@pytest.mark.xdist_group("simple-crypto")
def test_known_bugs_finds_the_pinned_bugs_on_barbican_23_and_leaves_nothing(env_of, tmp_path):
    env = env_of("simple-crypto")
    cloud, targets, osenv = cloud_of(env, tmp_path)
    before = project_state(env)
    start = time.monotonic()
    proc = harness_cli("known-bugs", "--cloud", cloud, "--targets", str(targets), "--allow-quota-changes", "--json",
                       env=osenv, timeout=300)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    statuses = {f["id"]: f["status"] for f in report["findings"]}

    # Every bug the catalogue knows in 23.0.0 and the API can show is present. The KMIP one
    # needs a KMIP store (tests/test_kmip_threads.py finds it there); the others say why no
    # API call can show them.
    expected = {b.id: NOT_CHECKABLE if b.not_checkable else PRESENT for b in BUGS if "23.0.0" in b.measured_in}
    expected["kmip-shared-client-threads"] = NOT_CHECKABLE
    assert statuses == expected, json.dumps(report["findings"], indent=1)
    evidence = {f["id"]: " | ".join(f["evidence"]) for f in report["findings"]}
    assert "does not apply: the default store is simple_crypto" in evidence["kmip-shared-client-threads"]
    assert "'Secret metadata creation failure seen" in evidence["metadata-put-deadlock"]
    assert "direct POST 403, but the order went ACTIVE" in evidence["orders-bypass-quotas"]
    assert "Content-Type '*/*'" in evidence["payload-wildcard-content-type"]
    for bug in BUGS:
        if bug.not_checkable:
            assert evidence[bug.id] == bug.not_checkable
    assert report["summary"] == {PRESENT: list(expected.values()).count(PRESENT), ABSENT: 0,
                                 NOT_CHECKABLE: list(expected.values()).count(NOT_CHECKABLE)}

    # Nothing left: the project's resources and quotas are as they were; the run undid every
    # write right after its probe, so the final sweep by name found nothing, and its record is closed.
    assert project_state(env) == before
    cleanup = report["cleanup"]
    assert cleanup["left"] == [] and cleanup["deleted"] >= 10  # the probes' secrets, containers, orders
    assert cleanup["swept_by_name"] == {"containers": 0, "secrets": 0, "orders": 0, "failed": 0}
    assert report["run_id"] not in Writes(Path(cleanup["writes_journal"]).parent).open_records()
    assert report["barbican_version"] == "23.0.0"
    run_dir = Path(report["run_dir"])
    assert run_dir.parent == runs_dir() and re.fullmatch(rf"known-bugs-{re.escape(cloud)}-\d{{8}}-\d{{6}}-\w{{4}}",
                                                         run_dir.name)
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert json.loads((run_dir / RESULTS_FILE).read_text()) == report
    print(f"known-bugs on an existing cloud: {took:.1f} s (probes {report['seconds']} s)")


def _journal_size(journal: Path) -> int:
    return journal.stat().st_size if journal.exists() else 0


def _stopped_when(proc: subprocess.Popen, journal: Path, since: int, recorded: str, condition,
                  timeout: float = 60) -> None:
    """Once the target's writes journal has a new line (after byte `since`) with `recorded`,
    let the CLI run in 20 ms steps until `condition()` holds; it is left stopped (SIGSTOP), so
    a window of the run is caught whatever its length."""
    deadline = time.monotonic() + timeout
    while not (journal.exists() and recorded in journal.read_bytes()[since:].decode()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    while True:
        os.kill(proc.pid, signal.SIGSTOP)
        if condition():
            return
        assert proc.poll() is None and time.monotonic() < deadline, "the run never got there"
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.02)


def _known_bugs(cloud: str, targets: Path, osenv: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "known-bugs", "--cloud", cloud, "--targets", str(targets), "--json", *args],
                            cwd=REPO, env=osenv, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)


@pytest.mark.integration
@pytest.mark.xdist_group("simple-crypto")
def test_ctrl_c_undoes_the_runs_writes_and_heal_what_a_killed_run_left(env_of, tmp_path):
    env = env_of("simple-crypto")
    cloud, targets, osenv = cloud_of(env, tmp_path)
    admin, quota_admin = env.session("admin"), env.session("service-admin")
    secrets_url = env.node().url + "/v1/secrets"
    quota_url = f"{env.node().url}/v1/project-quotas/{admin.get_project_id()}"
    journal = runs_dir() / f"cloud-{cloud}" / "writes.jsonl"
    opened = '"prefix": "known-bugs-'  # the run's record, written before its first write
    before = project_state(env)

    # Ctrl-C while the deadlock probe's secrets exist.
    since = _journal_size(journal)
    proc = _known_bugs(cloud, targets, osenv, "--bug", "metadata-put-deadlock")
    try:
        _stopped_when(proc, journal, since, opened, lambda: admin.get(secrets_url, params={"limit": 1}, timeout=15)
                      .json()["total"] > len(before["secrets"]))
        proc.send_signal(signal.SIGINT)
        os.kill(proc.pid, signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    report = json.loads(stdout)
    assert report["interrupted"] is True and report["cleanup"]["left"] == [], report["cleanup"]
    assert "interrupted: every write undone" in stderr
    assert project_state(env) == before

    # SIGKILL while the writer's project quota is 0: `heal` restores it (and deletes the rest).
    since = _journal_size(journal)
    proc = _known_bugs(cloud, targets, osenv, "--bug", "orders-bypass-quotas", "--allow-quota-changes")
    try:
        def quota_is_zero():
            r = quota_admin.get(quota_url, raise_exc=False, timeout=15)
            return r.status_code == 200 and r.json()["project_quotas"]["secrets"] == 0

        _stopped_when(proc, journal, since, '"quota": {"project"', quota_is_zero)
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    assert project_state(env) != before
    healed = harness_cli("heal", f"cloud-{cloud}", env=osenv, timeout=300)
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert "deleted what known-bugs-" in healed.stdout, healed.stdout
    assert project_state(env) == before
    assert not [p for p in Writes(runs_dir() / f"cloud-{cloud}").open_records() if p.startswith("known-bugs-")]
