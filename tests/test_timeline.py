"""Issue 11: the one timeline engine, as pure logic (no service): the order of actions,
that actions happen on time while the caller is busy, that a stop heals what is still
injected, and that an inject error is recorded while the timeline goes on."""

from __future__ import annotations

import time

import pytest

from harness.faults import CATALOG
from harness.faults.base import Fault, FaultError
from harness.faults.journal import Journal
from harness.target import Capability
from harness.timeline import Event, Timeline, events_from, plan, read_fault_timeline
from harness.errors import HarnessError
from tests.stubs import StubTarget


class _Noop(Fault):
    """A fault that only records when it was injected and healed (test only)."""

    name = "test_noop"
    capabilities = frozenset({Capability.API})

    def inject(self, env, undo):
        env.actions.append(("inject", time.monotonic()))

    def heal(self, env, undo):
        env.actions.append(("heal", time.monotonic()))


class _Slow(_Noop):
    """An inject that takes longer than the fault is planned to last (a slow restart)."""

    name = "test_slow"

    def inject(self, env, undo):
        time.sleep(0.5)
        super().inject(env, undo)


class _Broken(_Noop):
    name = "test_broken"

    def inject(self, env, undo):
        raise FaultError("cannot")


@pytest.fixture
def noop(monkeypatch):
    monkeypatch.setitem(CATALOG, "test_noop", _Noop)
    monkeypatch.setitem(CATALOG, "test_broken", _Broken)
    monkeypatch.setitem(CATALOG, "test_slow", _Slow)


def test_plan_orders_by_time_heal_before_inject_at_the_same_time():
    events = [Event(at=5, fault="node_kill", heal_at=10), Event(at=10, fault="node_pause", heal_at=12),
              Event(at=0, fault="db_outage")]
    assert plan(events) == [(0, "inject", 2), (5, "inject", 0), (10, "heal", 0), (10, "inject", 1),
                            (12, "heal", 1)]


def test_event_model_refuses_what_cannot_be_meant():
    for bad, field in (({"at": 1e9, "fault": "node_kill"}, "at"), ({"at": 5, "fault": "node_kill", "heal_at": 2}, "heal_at"),
                       ({"at": 1}, "exactly one"), ({"at": 1, "operation": "rotate_simple_crypto_kek", "heal_at": 3},
                                                       "no heal_at"),
                       ({"at": 1, "fault": "node_kill", "colour": "red"}, "colour")):
        with pytest.raises(HarnessError) as exc:
            events_from([bad], "t.yaml")
        assert "t.yaml" in str(exc.value) and field in str(exc.value)


def test_actions_happen_on_time_while_the_caller_is_busy(tmp_path, noop):
    target = StubTarget(tmp_path)
    events = [Event(at=0.2, fault="test_noop", heal_at=0.6), Event(at=0.4, fault="test_noop", heal_at=0.8)]
    timeline = Timeline(target, events, duration=1.0)
    timeline.start()
    time.sleep(1.2)  # a probe that takes longer than the whole timeline
    timeline.join(timeout=5)
    assert [a for a, _ in target.actions] == ["inject", "inject", "heal", "heal"]
    for w in timeline.windows:
        assert abs(w.drift_s["inject"]) < 0.1 and abs(w.drift_s["heal"]) < 0.1, w.drift_s
    states = {e["state"] for e in Journal(tmp_path).entries().values()}
    assert states == {"healed"}


def test_a_slow_inject_still_holds_for_its_planned_span(tmp_path, noop):
    target = StubTarget(tmp_path)
    timeline = Timeline(target, [Event(at=0.1, fault="test_slow", heal_at=0.4)], duration=0.5)
    timeline.start()
    timeline.join(timeout=5)
    (w,) = timeline.windows
    assert w.healed_at is not None and w.heal_started_at - w.in_effect_at >= 0.3 - 0.01
    assert w.drift_s["heal"] >= 0.3  # later than planned, and said so


def test_a_stretching_timeline_keeps_its_tail_after_late_steps(tmp_path, noop):
    """Two slow steps back to back (a rollout's node slots too short for a node restart):
    the second begins late, and with stretch the end moves by as much, so the time after
    the last step is still the planned 0.3 s; without stretch that tail shrinks."""
    events = [Event(at=0.0, fault="test_slow", heal_at=0.1), Event(at=0.1, fault="test_noop")]
    tails = {}
    for stretch in (False, True):
        (tmp_path / str(stretch)).mkdir()
        target = StubTarget(tmp_path / str(stretch))
        timeline = Timeline(target, events, duration=0.4, stretch=stretch)
        timeline.start()
        timeline.join(timeout=5)
        last = timeline.windows[1]
        assert timeline.lateness() >= 0.45  # the 0.5 s inject pushed the second step back
        ended = max(t for a, t in target.actions if a == "heal") - timeline.t0
        tails[stretch] = ended - last.injected_at
    assert tails[True] >= 0.3 - 0.02 and tails[False] < 0.1, tails


def test_stop_heals_what_is_injected_and_an_inject_error_is_recorded(tmp_path, noop):
    target = StubTarget(tmp_path)
    events = [Event(at=0, fault="test_broken"), Event(at=0.05, fault="test_noop")]
    timeline = Timeline(target, events, duration=60)
    timeline.start()
    time.sleep(0.3)
    timeline.stop()
    timeline.join(timeout=5)
    assert not timeline.is_alive()
    broken, noop_w = timeline.windows
    assert broken.error and "cannot" in broken.error and broken.fault_id is None
    assert noop_w.healed_at is not None and noop_w.drift_s["heal"] is None  # healed at stop: no plan
    assert [a for a, _ in target.actions] == ["inject", "heal"]


def test_seed_goes_to_faults_with_random_draws(tmp_path, noop):
    timeline = Timeline(StubTarget(tmp_path), [Event(at=0, fault="test_noop"),
                                            Event(at=0, fault="hsm_error", params={"probability": 0.5})],
                        duration=1, seed=40)
    assert timeline._params(1)["seed"] == 41 and "seed" not in timeline._params(0)


def test_a_fault_timeline_file_takes_faults_only(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("timeline:\n  - {at: 1, fault: node_kill, params: {node: '@secret[0]'}}\n")
    with pytest.raises(HarnessError, match="seeded items"):
        read_fault_timeline(f)
    f.write_text("duration: 1e9\ntimeline:\n  - {at: 1, fault: node_kill}\n")
    with pytest.raises(HarnessError, match="duration"):
        read_fault_timeline(f)
