"""classify()'s decisions from probe results alone (pure: no services), and the dependency
graph and log window it relies on."""

from __future__ import annotations

import datetime as dt

from harness.triage.dependencies import root_causes
from harness.triage.diagnose import classify
from harness.triage.logwindow import LogLine, current

OK_DEP = {"status": "ok", "detail": "fine", "seconds": 0.05}
HUNG = {"status": "timeout", "detail": "no answer within 3.0 s", "seconds": 3.0}


def _node(canary_ok: bool = True, sentinels_failed: list | None = None) -> dict:
    canary = {"store": "201", "get": "200", "match": True, "seconds": 0.2} if canary_ok else \
        {"store": "500", "body": "Secret creation failure seen", "seconds": 0.2}
    return {"reachable": "yes", "canary": canary, "sentinels": {"ok": 1, "failed": sentinels_failed or []},
            "tls": [], "expiry": []}


def _probes(deps: dict | None = None, **nodes) -> dict:
    return {"dependencies": deps or {}, "token": "ok", "backends": ["pkcs11"],
            "nodes": nodes or {"barbican-1": _node(), "barbican-2": _node()}}


def _line(node: str, text: str, during: bool, pid: int = 100, at: str = "2026-01-01 10:00:00.000") -> LogLine:
    return LogLine.parse(node, f"{at} {pid} ERROR barbican.plugin.crypto.p11_crypto [-] {text}", during=during)


def test_frozen_database_is_a_backend_outage_naming_the_database_with_keystone_affected():
    nodes = {"barbican-1": {"reachable": "yes"}, "barbican-2": {"reachable": "yes"}}
    v = classify({"dependencies": {"database": HUNG, "keystone": HUNG}, "nodes": nodes}, [])
    assert (v.category, v.incident, v.blast_radius) == ("backend_outage", "outage", "new_operations_only")
    assert v.root_cause == "database" and v.affected_services == ["keystone"]
    assert v.affected_nodes == ["barbican-1", "barbican-2"]
    assert v.evidence[0].startswith("probe database: no answer")
    assert not any("barbican-" in e for e in v.evidence)  # the nodes did not time out: the database did


def test_frozen_keystone_alone_is_an_auth_outage_caused_by_keystone():
    nodes = {"barbican-1": {"reachable": "yes"}, "barbican-2": {"reachable": "yes"}}
    v = classify({"dependencies": {"database": OK_DEP, "keystone": HUNG}, "nodes": nodes}, [])
    assert (v.category, v.root_cause, v.affected_services) == ("auth_outage", "keystone", [])
    assert v.affected_nodes == ["barbican-1", "barbican-2"]


def test_root_causes_follow_the_graph():
    assert root_causes({"database": HUNG, "keystone": HUNG, "hsm": OK_DEP}) == (["database"], ["keystone"])
    assert root_causes({"database": OK_DEP, "keystone": HUNG}) == (["keystone"], [])
    assert root_causes({"hsm": HUNG, "database": OK_DEP}) == (["hsm"], [])


def test_stale_lines_of_a_healthy_node_do_not_decide_a_failing_one():
    """An MKEK incident healed earlier left lines on node 1; node 2 now has a wrong PIN."""
    probes = _probes({"hsm": OK_DEP}, **{"barbican-1": _node(), "barbican-2": _node(canary_ok=False)})
    lines = [_line("barbican-1", "Could not find key labeled MKEK", during=False),
             _line("barbican-2", "HSM returned response code: 0xa0 CKR_PIN_INCORRECT", during=False)]
    v = classify(probes, lines)
    assert (v.category, v.incident, v.affected_nodes) == ("hsm_unreachable", "outage", ["barbican-2"])
    assert any("[2026-01-01 10:00:00]" in e and "CKR_PIN_INCORRECT" in e for e in v.evidence)


def test_a_reinit_before_the_probes_with_every_probe_fine_is_over():
    lines = [_line("barbican-1", "Reinitializing PKCS#11 library: CKR_DEVICE_ERROR", during=False)]
    assert classify(_probes(), lines).category == "healthy"
    # The same line caused by this round's probes is a current degradation.
    lines = [_line("barbican-1", "Reinitializing PKCS#11 library: CKR_DEVICE_ERROR", during=True)]
    v = classify(_probes(), lines)
    assert (v.category, v.affected_nodes) == ("hsm_degraded", ["barbican-1"])


def test_a_failing_node_without_log_lines_is_explained_by_the_hsm_probe():
    missing = {"status": "error", "detail": "HsmKeyMissing: missing keys: MKEK", "seconds": 0.2}
    probes = _probes({"hsm": missing}, **{"barbican-1": _node(canary_ok=False), "barbican-2": _node(canary_ok=False)})
    v = classify(probes, [])
    assert (v.category, v.incident, v.root_cause) == ("kek_mismatch_or_key_loss", "data_loss", "hsm")
    unreadable = {"status": "error", "detail": "HarnessError: HSM probe: CKR_TOKEN_NOT_PRESENT", "seconds": 0.2}
    v = classify(_probes({"hsm": unreadable}, **{"barbican-1": _node(canary_ok=False)}), [])
    assert (v.category, v.incident, v.affected_nodes) == ("hsm_unreachable", "outage", ["barbican-1"])


def test_discovered_expired_consumed_secret_is_an_expiration_and_expiring_ones_only_warn():
    probes = _probes()
    probes["expiry_audit"] = {"horizon_s": 86400, "expired": [
        {"id": "abc", "expiration": "2026-01-01T00:00:00+00:00", "expired": True, "source": "database"}],
        "expiring": []}
    v = classify(probes, [])
    assert (v.category, v.blast_radius) == ("expiration", "existing_secrets_at_risk")
    assert v.affected_nodes == ["barbican-1", "barbican-2"] and "abc" in v.evidence[0]
    probes["expiry_audit"] = {"horizon_s": 86400, "expired": [], "expiring": [
        {"id": "def", "expiration": "2026-01-02T00:00:00+00:00", "expired": False, "source": "api (creator)"}]}
    v = classify(probes, [])
    assert v.category == "healthy" and "def" in v.evidence[0] and "within 24 h" in v.evidence[0]


def test_log_window_drops_old_lines_and_lines_of_processes_that_are_gone():
    lines = [_line("barbican-1", "old", True, pid=1, at="2026-01-01 09:00:00.000"),
             LogLine("barbican-1", "Traceback continuation without a timestamp"),
             _line("barbican-1", "new from a dead process", True, pid=2),
             _line("barbican-1", "new from a live process", True, pid=3)]
    kept = current(lines, dt.datetime(2026, 1, 1, 9, 30), alive=lambda pid: pid == 3)
    assert [ln.text.split("[-] ")[-1] for ln in kept] == ["new from a live process"]
