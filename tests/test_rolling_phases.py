"""The rolling upgrade's plan and its per-phase judgement (pure logic: the figures come from
per-second series written the way the Locust processes write them)."""

from __future__ import annotations

import pytest

from harness.errors import HarnessError
from harness.load_driver.series import SeriesRecorder
from harness.upgrade.rolling import PhaseLimit, RollingPlan, parse_phase_limit, phases


class _Build:
    def __init__(self, version):
        self.version = version


def test_schedule_puts_the_steps_back_to_back():
    plan = RollingPlan(baseline_s=10, db_slot_s=20, node_slot_s=15, settle_s=25)
    events, duration = plan.schedule(["barbican-1", "barbican-2", "barbican-worker-1"])
    assert [(e.fault, e.params, e.at) for e in events] == [
        ("upgrade_db", {}, 10), ("upgrade_node", {"service": "barbican-1"}, 30),
        ("upgrade_node", {"service": "barbican-2"}, 45), ("upgrade_node", {"service": "barbican-worker-1"}, 60),
        ("upgrade_done", {}, 75)]
    assert [e.heal_at for e in events] == [30, 45, 60, 75, None]  # each window closes when the next opens
    assert duration == 100


def _load(tmp_path, requests: dict[int, tuple[int, int, float]], windows: list[dict]) -> dict:
    """A load run's result with `requests[t] = (n, failed, rt_ms)` started in second t."""
    rec = SeriesRecorder(tmp_path / "series")
    for t, (n, failed, rt) in requests.items():
        for i in range(n):
            rec.add(1000 + t + 0.5, "secret.create", "POST", rt, i < failed, "HTTP 500" if i < failed else None,
                    node="barbican-1")
    rec.flush()
    return {"started_wall": 1000.0, "ended_wall": 1000.0 + max(requests) + 1, "windows": windows}


def test_each_phase_has_its_own_figures_and_verdicts(tmp_path):
    windows = [{"fault": "upgrade_db", "params": {}, "injected_wall": 1002.0},
               {"fault": "upgrade_node", "params": {"service": "barbican-1"}, "injected_wall": 1004.0},
               {"fault": "upgrade_node", "params": {"service": "barbican-2"}, "injected_wall": 1006.0,
                "error": "ServiceStartError: barbican-2: did not answer"},
               {"fault": "upgrade_done", "params": {}, "injected_wall": 1008.0}]
    load = _load(tmp_path, {0: (10, 0, 50), 1: (10, 0, 50), 2: (10, 0, 60), 3: (10, 0, 60), 4: (10, 2, 900),
                            5: (10, 0, 900), 6: (10, 0, 50), 7: (10, 0, 50), 8: (10, 0, 50), 9: (10, 0, 50)}, windows)
    limits = [PhaseLimit("error_ratio", 0.0), PhaseLimit("p95_ms", 500, "node")]
    got = phases(load, tmp_path / "series", _Build("22.0.0"), _Build("23.0.0"), limits)
    assert [(p["phase"], p["kind"], p["from_s"], p["to_s"]) for p in got] == [
        ("all on FROM 22.0.0", "from", 0, 2), ("db upgrade (23.0.0)", "db", 2, 4),
        ("barbican-1 → 23.0.0", "node", 4, 6), ("barbican-2 → 23.0.0", "node", 6, 8),
        ("all on TO 23.0.0", "to", 8, 10)]
    assert [p["requests"] for p in got] == [20, 20, 20, 20, 20]
    by = {p["phase"]: p for p in got}
    node1 = by["barbican-1 → 23.0.0"]
    assert node1["failures"] == 2 and node1["error_ratio"] == 0.1 and node1["p95_ms"] == 900
    assert node1["errors"] == {"HTTP 500": 2} and not node1["ok"]
    assert node1["breaches"] == ["max-error-ratio 0: 2/20 requests failed (0.1000)", "max-p95-ms node:500: p95 900 ms"]
    assert by["db upgrade (23.0.0)"]["ok"] and by["db upgrade (23.0.0)"]["limits"] == ["max-error-ratio 0"]
    node2 = by["barbican-2 → 23.0.0"]  # no failed request, but its step failed
    assert not node2["breaches"] and node2["error"].startswith("ServiceStartError") and not node2["ok"]
    assert by["all on TO 23.0.0"]["ok"]


def test_a_phase_without_requests_cannot_pass(tmp_path):
    load = _load(tmp_path, {0: (5, 0, 50), 9: (5, 0, 50)},
                 [{"fault": "upgrade_db", "params": {}, "injected_wall": 1002.0},
                  {"fault": "upgrade_done", "params": {}, "injected_wall": 1005.0}])
    got = phases(load, tmp_path / "series", _Build("A"), _Build("B"), [PhaseLimit("error_ratio", 0.0)])
    db = got[1]
    assert db["requests"] == 0 and not db["ok"] and "no request started" in db["breaches"][0]


def test_phase_limits_parse_or_say_what_is_allowed():
    assert parse_phase_limit("0.01", "error_ratio") == PhaseLimit("error_ratio", 0.01, "*")
    assert parse_phase_limit("node:800", "p95_ms").label == "max-p95-ms node:800"
    for text, expected in (("web:0.1", "phase 'web' is not one of from, db, node, to"),
                           ("node:x", "expected [PHASE:]VALUE"), ("-1", "must be >= 0")):
        with pytest.raises(HarnessError) as err:
            parse_phase_limit(text, "error_ratio")
        assert expected in str(err.value)
