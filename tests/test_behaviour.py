"""Behaviour under faults as a gate (harness.behaviour): signatures, noise, diffs.

Pure logic (normalising, classifying, accepting) on hand-made signatures; then real runs:
the same build against itself three times (no difference), and, behind --soak, Barbican's
installed package copied into an overlay (`--barbican overlay:DIR`), altered in one of four
places, and diffed against its unaltered self under the fault that exposes the change."""

from __future__ import annotations

import itertools
import shutil
import time
from pathlib import Path

import pytest
import yaml

from harness.behaviour import diff, noise, signature
from harness.errors import HarnessError
from harness.runner import run_scenario
from harness.scenario import load_scenario
from harness.target import Capability
from tests.conftest import REPO, harness_cli, topology

SCENARIOS = REPO / "scenarios"


# -- pure logic -------------------------------------------------------------------------------
def test_messages_are_normalised_without_refs_ids_times_or_numbers():
    raw = ("Secret 3f2b8a1c-1111-4222-8333-944445555666 at http://127.0.0.1:43817/v1/secrets/x "
           "failed at 2026-12-05T02:20:45.123Z after 187 msecs (0xdeadbeefcafe1234)")
    assert signature.normalise(raw) == "Secret <id> at <url> failed at <time> after <n> msecs (<hex>)"


def _sig(name: str, during: list[dict[str, str]], restart: bool = False) -> dict:
    """A signature with one healthy round before, the given rounds during, one after."""
    def round_(phase, statuses):
        return {"phase": phase, "t": 0, "category": "healthy" if phase != "during" else "x",
                "nodes": {"barbican-1": {op: {"status": st, "answered": st[0].isdigit(),
                                               **({"message": f"{op} failure {st}"} if st[0] != "2" else {})}
                                          for op, st in statuses.items()}},
                "global": {}, "logs": {}}
    ok = {"read_existing": "200", "store": "201"}
    return {"format": 1, "scenario": name, "rounds": [round_("before", ok), *(round_("during", d) for d in during),
                                                       round_("after", ok)],
            "recovery": {"first_good_s": 1.0, "restart_needed": restart, "healthy": not restart}}


def test_an_error_that_turns_into_not_found_is_the_most_dangerous_class():
    base = _sig("db-down", [{"read_existing": "500", "store": "500"}] * 3)
    cand = _sig("db-down", [{"read_existing": "404", "store": "503"}] * 3, restart=True)
    diffs = diff.compare({"db-down": [base]}, {"db-down": [cand]})
    first = diffs[0]
    assert (first.cls, first.scenario, first.phase, first.node, first.operation, first.before, first.after) == \
        ("not-found", "db-down", "during", "barbican-1", "read_existing", "500", "404")
    assert "data loss" in first.meaning
    kinds = {(d.operation or d.field, d.cls) for d in diffs}
    assert ("store", "changed") in kinds and ("restart", "outage") in kinds


def test_jitter_is_not_a_difference_ties_round_counts_and_transient_rounds():
    # Another number of rounds, the transient error in another round, a tie broken the same way.
    base = _sig("s", [{"read_existing": "500"}, {"read_existing": "200"}, {"read_existing": "200"}])
    cand = _sig("s", [{"read_existing": "200"}, {"read_existing": "200"}, {"read_existing": "500"},
                      {"read_existing": "200"}])
    assert diff.compare({"s": [base]}, {"s": [cand]}) == []
    tie_a = _sig("s", [{"read_existing": "500"}, {"read_existing": "200"}])
    tie_b = _sig("s", [{"read_existing": "200"}, {"read_existing": "500"}])
    assert diff.compare({"s": [tie_a]}, {"s": [tie_b]}) == []
    assert not noise.latency_changed(0.45, 0.55) and noise.latency_changed(0.3, 2.5)


def test_accepted_differences_are_matched_and_a_bad_accept_file_is_one_line(tmp_path):
    base, cand = _sig("s", [{"read_existing": "500"}]), _sig("s", [{"read_existing": "503"}])
    (d,) = [x for x in diff.compare({"s": [base]}, {"s": [cand]}) if x.field == "status"]
    good = tmp_path / "accept.yaml"
    good.write_text("- {scenario: s, field: status, operation: read_existing, after: '503', reason: retried}\n")
    assert diff.accepted(d, diff.load_accept(good))
    assert not diff.accepted(d, [{"scenario": "s", "field": "status", "after": "404"}])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {scenario: s, field: status, colour: red}\n")
    with pytest.raises(HarnessError, match=r"bad.yaml: item 0: field 'colour' is not allowed; allowed: scenario"):
        diff.load_accept(bad)
    bad.write_text("- {operation: store}\n")
    with pytest.raises(HarnessError, match=r"item 0: field 'scenario' is required"):
        diff.load_accept(bad)


def test_a_delayed_phase_is_told_from_the_fault_and_its_transition():
    from harness.runner import _phase

    scenario = load_scenario(SCENARIOS / "hsm-mkek-deleted-cache-expiry.yaml")
    assert [_phase(scenario, t) for t in (0.5, 11.9, 12.0, 31.9, 32.0, 60)] == \
        ["during", "during", "transition", "transition", "delayed", "delayed"]
    assert _phase(load_scenario(SCENARIOS / "db-down.yaml"), 60) == "during"
    # A phase seen on one side only is one difference, not one per cell.
    base = _sig("s", [{"read_existing": "500"}])
    cand = {**base, "rounds": [r for r in base["rounds"] if r["phase"] != "during"]}
    (d,) = diff.compare({"s": [base]}, {"s": [cand]})
    assert (d.phase, d.field, d.before, d.after) == ("during", "present", "yes", "no")


def test_a_declared_delayed_phase_must_be_reached_and_differ():
    from harness.runner import delayed_phase_failures

    quiet, failing = {"read_existing": "200", "store": "201"}, {"read_existing": "503", "store": "503"}
    sig = _sig("s", [quiet, quiet])
    delayed = {**sig["rounds"][1], "phase": "delayed", "nodes": _sig("s", [failing])["rounds"][1]["nodes"]}
    reached = {**sig, "rounds": [*sig["rounds"][:-1], delayed, sig["rounds"][-1]]}
    assert delayed_phase_failures(reached, 10) == []
    (never,) = delayed_phase_failures(sig, 10)
    assert "no probe round in the delayed phase" in never and "must last longer" in never
    same = {**sig, "rounds": [*sig["rounds"][:-1], {**sig["rounds"][1], "phase": "delayed"}, sig["rounds"][-1]]}
    (alike,) = delayed_phase_failures(same, 10)
    assert "behaved as in the fault's first phase after 10 s" in alike


def test_diff_behaviour_refuses_a_bad_source_before_anything_runs(tmp_path):
    from harness.builds import parse_source

    with pytest.raises(HarnessError, match=r"overlay:.*holds no barbican/__init__.py"):
        parse_source(f"overlay:{tmp_path}")
    (tmp_path / "barbican").mkdir()
    (tmp_path / "barbican" / "__init__.py").write_text("")
    assert parse_source(f"overlay:{tmp_path}").spec == f"overlay:{tmp_path}"
    proc = harness_cli("diff-behaviour", str(tmp_path), "svn:x", timeout=60)
    assert proc.returncode == 2 and "diff-behaviour 'svn:x': unknown kind 'svn'" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- real runs ----------------------------------------------------------------------------------
NOISE_SCENARIOS = ("db-down", "kek-mismatch-one-node")  # a database outage; a node restarted with another KEK


@pytest.mark.integration
@pytest.mark.xdist_group("simple-crypto")
def test_the_same_build_against_itself_reports_no_difference_three_runs_in_a_row(env_of):
    env = env_of("simple-crypto")
    runs: list[list[Path]] = [[], [], []]
    for name in NOISE_SCENARIOS:
        scenario = load_scenario(SCENARIOS / f"{name}.yaml")
        for i in range(3):
            result = run_scenario(scenario, env=env)
            assert result.passed, result.failures
            runs[i].append(Path(result.run_dir))
    sig = signature.load(runs[0][0])
    assert [r["phase"] for r in sig["rounds"]][:2] == ["before", "during"] and sig["recovery"]["healthy"]
    # The signatures record what the faults do, or a run against itself proves nothing.
    assert noise.summarise(sig)["phases"]["during"]["barbican-1/store"]["status"] == "500"
    kek = noise.summarise(signature.load(runs[0][1]))["phases"]["during"]
    assert kek["barbican-2/read_existing"]["status"] == "500" and kek["barbican-1/read_existing"]["status"] == "200"
    for a, b in itertools.combinations(runs, 2):
        found = diff.compare(diff.load_runs(a), diff.load_runs(b))
        assert found == [], [d.line() for d in found]
    proc = harness_cli("diff-behaviour", str(runs[0][0]), str(runs[2][0]), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 difference(s) in 1 scenario(s), 0 not accepted" in proc.stdout


# -- altered builds (--soak) --------------------------------------------------------------------
# (name, scenario, topology, file in the barbican package, old text, new text, node, operation,
#  phase, before, after): each change alters what Barbican does under that scenario's fault.
ALTERATIONS = [
    ("api-error-mapping-500-as-404", "kek-mismatch-one-node", "simple-crypto", "api/__init__.py",
     "                      'administrator.').format(operation=operation_name)\n",
     "                      'administrator.').format(operation=operation_name)\n        status = 404\n",
     "barbican-2", "read_existing", "during", "500", "404"),
    ("repositories-db-error-as-not-found", "db-down", "simple-crypto", "model/repositories.py",
     "            entity = query.one()\n        except sa_orm.exc.NoResultFound:\n            entity = None\n"
     "            if not suppress_exception:\n                LOG.exception(\"Problem getting secret %s\",",
     "            entity = query.one()\n        except Exception:\n            entity = None\n"
     "            if not suppress_exception:\n                LOG.exception(\"Problem getting secret %s\",",
     "barbican-1", "read_existing", "during", "refused", "404"),
    ("simple-crypto-invalid-token-as-400", "kek-mismatch-one-node", "simple-crypto",
     "plugin/crypto/simple_crypto.py",
     "        kek = self._get_kek(kek_meta_dto)\n        encrypted = decrypt_dto.encrypted\n"
     "        decryptor = fernet.Fernet(kek)\n        return decryptor.decrypt(encrypted)\n",
     "        try:\n            kek = self._get_kek(kek_meta_dto)\n            encrypted = decrypt_dto.encrypted\n"
     "            return fernet.Fernet(kek).decrypt(encrypted)\n        except fernet.InvalidToken:\n"
     "            from barbican.common import exception as _exc\n"
     "            e = _exc.BarbicanHTTPException(client_message='the secret cannot be decrypted')\n"
     "            e.status_code = 400\n            raise e\n",
     "barbican-2", "read_existing", "during", "500", "400"),
    ("p11-retry-failure-as-503", "hsm-device-error-persistent", "pkcs11-softhsm", "plugin/crypto/p11_crypto.py",
     "            LOG.warning(\"Reinitializing PKCS#11 library: %s\", pe)\n"
     "            self._reinitialize_pkcs11()\n            return func(*args, **kwargs)\n",
     "            LOG.warning(\"Reinitializing PKCS#11 library: %s\", pe)\n"
     "            self._reinitialize_pkcs11()\n            try:\n                return func(*args, **kwargs)\n"
     "            except exception.PKCS11Exception:\n"
     "                e = exception.BarbicanHTTPException(client_message='the HSM is unavailable')\n"
     "                e.status_code = 503\n                raise e\n",
     "barbican-2", "get", "during", "500", "503"),
]


def copy_barbican(dest: Path) -> Path:
    """A copy of the harness venv's barbican package in `dest` (an overlay directory)."""
    import barbican

    src = Path(barbican.__file__).resolve().parent
    shutil.copytree(src, dest / "barbican", ignore=shutil.ignore_patterns("__pycache__", "tests"))
    return dest


@pytest.fixture(scope="module")
def overlay_envs(tmp_path_factory):
    """Per topology: an environment running an overlay copy of Barbican (unaltered at rest)."""
    from harness.environment import Environment

    made: dict[str, tuple] = {}

    def get(name: str):
        if name not in made:
            root = copy_barbican(tmp_path_factory.mktemp(f"overlay-{name}"))
            made[name] = (Environment.up(topology(name), barbican=f"overlay:{root}"), root)
        return made[name]

    yield get
    for env, _ in made.values():
        env.down()


def _restart(env) -> None:
    control = env.facet(Capability.NODE_CONTROL)
    for node in env.nodes:
        control.restart(node.name)


@pytest.mark.soak
@pytest.mark.integration
@pytest.mark.parametrize("alteration", ALTERATIONS, ids=[a[0] for a in ALTERATIONS])
def test_an_altered_barbican_is_reported_naming_scenario_node_operation_and_behaviour(alteration, overlay_envs,
                                                                                       tmp_path):
    name, scen, topo, rel, old, new, node, op, phase, before, after = alteration
    env, root = overlay_envs(topo)
    scenario = load_scenario(SCENARIOS / f"{scen}.yaml")
    assert env.ctx.barbican_build.overlay == str(root)
    baseline = run_scenario(scenario, env=env)
    path = root / "barbican" / rel
    original = path.read_text()
    assert original.count(old) == 1, f"{rel}: the text to alter is not there once"
    start = time.monotonic()
    try:
        path.write_text(original.replace(old, new))
        _restart(env)
        altered = run_scenario(scenario, env=env)
    finally:
        path.write_text(original)
        _restart(env)
    found = diff.compare(diff.load_runs([Path(baseline.run_dir)]), diff.load_runs([Path(altered.run_dir)]))
    print(f"{name}: {len(found)} difference(s), altered run {time.monotonic() - start:.0f} s; the scenario's "
          f"own verdict with the change: {'PASS' if altered.passed else 'FAIL'}")
    for d in found:
        print("  " + d.line())
    match = [d for d in found if (d.scenario, d.node, d.operation, d.phase, d.before, d.after)
             == (scen, node, op, phase, before, after)]
    assert match, [d.line() for d in found]
    if after == "404":
        assert match[0].cls == "not-found"
    # The gate: non-zero until the differences are accepted, then zero.
    proc = harness_cli("diff-behaviour", baseline.run_dir, altered.run_dir, timeout=120)
    assert proc.returncode == 1 and match[0].line() in proc.stdout, proc.stdout + proc.stderr
    accept = tmp_path / "accepted.yaml"
    accept.write_text(yaml.safe_dump([{k: v for k, v in d.to_dict().items() if k not in ("cls", "meaning")}
                                      for d in found]))
    proc = harness_cli("diff-behaviour", baseline.run_dir, altered.run_dir, "--accept", str(accept), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
