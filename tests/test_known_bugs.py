"""Issue 13, item 4: `barbican-harness known-bugs` on a Barbican the harness did not start.

The catalogue (harness/known_bugs/catalogue.py) and the suites' strict xfails are one
thing: checked here in pure logic. On a harness environment used only as an existing
cloud (its clouds.yaml and a targets file) on Barbican 23.0.0, every catalogued bug the
API can show is reported present, and the project's secrets, containers, orders and
quota are exactly as before; a killed run's writes are undone by the next run, and
Ctrl-C undoes its own."""

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
                                       UNKNOWN, Observation, Writes, judge)
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


def test_the_write_journal_keeps_what_was_not_undone(tmp_path):
    writes = Writes(tmp_path, "cloud 'c'")
    a = writes.record("secret", "creator", name="kb-a")                    # before the POST
    writes.record("secret", "creator", name="kb-a", ref="http://x/v1/secrets/a")  # after it
    writes.record("secret", "creator", name="kb-cut")                       # a POST cut off by a kill
    writes.record("quota", "service-admin", ref="project-1", original={"secrets": 5})
    writes.undone(a)
    with open(writes.path, "a") as f:
        f.write('{"key": "secret:kb-x", "kind": "sec')                     # a line cut by a kill
    pending = Writes(tmp_path, "cloud 'c'").pending()
    assert [(e["kind"], e["name"], e["ref"], e.get("original")) for e in pending] == [
        ("quota", None, "project-1", {"secrets": 5}), ("secret", "kb-cut", None, None)]
    assert {e["target"] for e in pending} == {"cloud 'c'"}


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
            uses = f'known_bug("{bug.id}")' in text
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
    ([], "name one Barbican: --cloud NAME [--targets FILE], or --run RUN_ID"),
    (["--cloud", "c", "--run", "r"], "name one Barbican"),
    (["--targets", "t.yaml", "--run", "r"], "name one Barbican"),
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

    # Nothing left: the project's resources and quotas are as they were; the run undid every write.
    assert project_state(env) == before
    assert report["cleanup"] == {"undone": report["cleanup"]["undone"], "left": [],
                                 "from_interrupted_runs": {"undone": 0, "left": []}}
    assert report["cleanup"]["undone"] >= 10  # the probes' secrets, containers, orders, the quota
    run_dir = Path(report["run_dir"])
    assert run_dir.parent == runs_dir() and re.fullmatch(rf"known-bugs-{re.escape(cloud)}-\d{{8}}-\d{{6}}-\w{{4}}",
                                                         run_dir.name)
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert json.loads((run_dir / RESULTS_FILE).read_text()) == report
    assert Writes(run_dir, report["target"]).pending() == []
    print(f"known-bugs on an existing cloud: {took:.1f} s (probes {report['seconds']} s)")


def _newest_run(cloud: str, after: set[Path]) -> Path | None:
    new = sorted(set(runs_dir().glob(f"known-bugs-{cloud}-*")) - after)
    return new[-1] if new else None


def _start_and_signal(cloud: str, targets: Path, osenv: dict, sig: int) -> tuple[subprocess.CompletedProcess, Path]:
    """Start the deadlock probe, wait until it has journaled secrets of its own, send `sig`."""
    before = set(runs_dir().glob(f"known-bugs-{cloud}-*"))
    proc = subprocess.Popen([*CLI, "known-bugs", "--cloud", cloud, "--targets", str(targets), "--json",
                             "--bug", "metadata-put-deadlock"], cwd=REPO, env=osenv, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            run_dir = _newest_run(cloud, before)
            journal = run_dir / Writes.FILE if run_dir else None
            if journal and journal.exists() and len(journal.read_text().splitlines()) >= 3:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        else:
            raise AssertionError("the probe journaled no write within 60 s")
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), run_dir


@pytest.mark.integration
@pytest.mark.xdist_group("simple-crypto")
def test_a_killed_run_is_undone_by_the_next_and_ctrl_c_undoes_its_own(env_of, tmp_path):
    env = env_of("simple-crypto")
    cloud, targets, osenv = cloud_of(env, tmp_path)
    before = project_state(env)

    killed, killed_dir = _start_and_signal(cloud, targets, osenv, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    left = Writes(killed_dir, "").pending()
    assert left and project_state(env) != before  # the kill left probe secrets behind

    interrupted, _ = _start_and_signal(cloud, targets, osenv, signal.SIGINT)
    assert interrupted.returncode == 130, interrupted.stderr
    report = json.loads(interrupted.stdout)
    assert report["interrupted"] is True
    assert report["cleanup"]["from_interrupted_runs"] == {"undone": len(left), "left": []}
    assert report["cleanup"]["left"] == [] and report["cleanup"]["undone"] >= 1
    assert Writes(killed_dir, "").pending() == []
    assert project_state(env) == before
