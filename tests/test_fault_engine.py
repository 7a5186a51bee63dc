"""Issue 11: the fault engine and its journal as pure logic (no service): the states an
entry goes through, a half-made fault healed at once, Ctrl-C during an inject, a failed
heal recorded while the others are still healed, and what `heal` finds after a crash
(a second engine on the same run directory, as the `heal` command is)."""

from __future__ import annotations

import pytest

from harness.faults import CATALOG
from harness.faults.base import Fault, FaultError, Params
from harness.faults.engine import FaultEngine
from harness.faults.journal import Journal
from harness.target import Capability
from tests.stubs import StubTarget


class _Marker(Params):
    key: str = "a"
    fail: str = ""  # "", "inject", "heal", "interrupt"


class _Recording(Fault):
    """Test fault: records inject/heal on the target; fails where told."""

    name = "test_recording"
    Params = _Marker
    capabilities = frozenset({Capability.API})

    def prepare(self, env):
        return {"key": self.params.key}

    def inject(self, env, undo):
        if self.params.fail == "inject":
            raise FaultError("inject broke half-way")
        if self.params.fail == "interrupt":
            raise KeyboardInterrupt
        env.actions.append(("inject", undo["key"]))

    def heal(self, env, undo):
        if self.params.fail == "heal":
            raise FaultError("heal broke")
        env.actions.append(("heal", undo["key"]))


@pytest.fixture
def target(tmp_path, monkeypatch):
    monkeypatch.setitem(CATALOG, "test_recording", _Recording)
    return StubTarget(tmp_path)


def states(target, fault_id):
    return [h["state"] for h in Journal(target.run_dir).entries()[fault_id]["history"]]


def test_inject_then_heal_walks_every_state(target):
    engine = FaultEngine(target)
    fault_id = engine.inject("test_recording", {"key": "k1"})
    assert states(target, fault_id) == ["injecting", "prepared", "injected"]
    assert [e["id"] for e in engine.active()] == [fault_id]
    engine.heal(fault_id)
    engine.heal(fault_id)  # healing a healed fault does nothing
    assert states(target, fault_id) == ["injecting", "prepared", "injected", "healing", "healed"]
    assert target.actions == [("inject", "k1"), ("heal", "k1")] and engine.active() == []


def test_a_half_made_fault_is_healed_at_once(target):
    with pytest.raises(FaultError, match="half-way"):
        FaultEngine(target).inject("test_recording", {"key": "k2", "fail": "inject"})
    (entry,) = Journal(target.run_dir).entries().values()
    assert [h["state"] for h in entry["history"]] == ["injecting", "prepared", "inject_failed", "healing", "healed"]
    assert "half-way" in entry["error"] and target.actions == [("heal", "k2")]


def test_ctrl_c_during_inject_heals_and_goes_on_up(target):
    with pytest.raises(KeyboardInterrupt):
        FaultEngine(target).inject("test_recording", {"fail": "interrupt"})
    (entry,) = Journal(target.run_dir).entries().values()
    assert entry["state"] == "healed"


def test_heal_after_a_crash_finds_the_undo_data_and_heals_newest_first(target):
    first = FaultEngine(target).inject("test_recording", {"key": "old"})
    second = FaultEngine(target).inject("test_recording", {"key": "new"})
    # The process that injected is gone: a new engine reads the journal alone.
    healed = FaultEngine(target).heal_all()
    assert healed == [second, first]
    assert target.actions[-2:] == [("heal", "new"), ("heal", "old")]


def test_a_failed_heal_is_recorded_and_the_others_are_still_healed(target):
    engine = FaultEngine(target)
    good = engine.inject("test_recording", {"key": "good"})
    bad = engine.inject("test_recording", {"key": "bad", "fail": "heal"})
    with pytest.raises(FaultError, match="could not be healed") as exc:
        engine.heal_all()
    assert bad in str(exc.value)
    entries = Journal(target.run_dir).entries()
    assert entries[bad]["state"] == "heal_failed" and entries[good]["state"] == "healed"
    assert [e["id"] for e in engine.active()] == [bad]  # still there for the next `heal`


def test_unknown_fault_id_is_an_error(target):
    with pytest.raises(FaultError, match="no fault 'nope'"):
        FaultEngine(target).heal("nope")
