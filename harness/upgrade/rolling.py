"""Rolling upgrade under load: FROM's API nodes serve Locust load while TO's schema upgrade
runs and the nodes are replaced one at a time, as operators upgrade a production cloud.

Phases, back to back on the load's clock (each a window on the report's plots):
  all on FROM      the load before anything changes
  db upgrade       TO's `barbican-manage db upgrade` while FROM's nodes serve
  <node> → TO      the node is taken out of rotation (as a load balancer does), drained,
                   stopped, started on TO, proven ready (a secret stored through it and read
                   back through the next node, FROM or TO) and put back; the phase lasts
                   until the next node's turn, with FROM and TO nodes serving together
  all on TO        every node (and the worker) on TO, until the load ends; steps that ran
                   late make the load longer, so this phase keeps its planned length

Each phase has its own error ratio and p95 over every request started in it, and its own
thresholds (--max-error-ratio / --max-p95-ms with a phase kind: from, db, node, to).
Zero-downtime: yes when every phase holds its thresholds, every step worked and the load's
integrity ledger lost nothing.

The steps run on the load driver's fault timeline (harness.load_driver.run_load's timeline events)
as three steps shaped like faults, upgrade_db, upgrade_node and upgrade_done, in the fault
catalog only while a rollout runs. Their heal does nothing: an upgrade is not undone, and a
step's window closes when the next step starts.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.faults import CATALOG
from harness.faults.base import Fault, Params
from harness.load_driver import rotation
from harness.target import Capability

PHASE_KINDS = ("from", "db", "node", "to")


@dataclass(frozen=True)
class PhaseLimit:
    metric: str  # error_ratio | p95_ms
    limit: float
    kind: str = "*"  # one of PHASE_KINDS, or every phase

    @property
    def label(self) -> str:
        flag = "max-error-ratio" if self.metric == "error_ratio" else "max-p95-ms"
        return f"{flag} {'' if self.kind == '*' else self.kind + ':'}{self.limit:g}"


def parse_phase_limit(text: str, metric: str) -> PhaseLimit:
    """`0.01` (every phase) or `KIND:VALUE`, KIND one of from, db, node, to."""
    flag = "--max-error-ratio" if metric == "error_ratio" else "--max-p95-ms"
    kind, sep, value = text.strip().rpartition(":")
    kind = kind if sep else "*"
    if kind not in (*PHASE_KINDS, "*"):
        raise HarnessError(f"{flag} '{text}': phase '{kind}' is not one of {', '.join(PHASE_KINDS)}")
    try:
        limit = float(value)
    except ValueError:
        raise HarnessError(f"{flag} '{text}': expected [PHASE:]VALUE, e.g. node:0.01") from None
    if limit < 0:
        raise HarnessError(f"{flag} '{text}': the limit must be >= 0")
    return PhaseLimit(metric, limit, kind)


@dataclass
class RollingPlan:
    """How a rollout is run and judged. Slots are what a step is given before the next one
    starts; a step that takes longer pushes the next ones back, and the load runs longer
    by as much (at most its planned length again), so "all on TO" still lasts settle_s."""

    users: int = 10
    spawn_rate: float = 5.0
    baseline_s: float = 20.0
    db_slot_s: float = 30.0
    node_slot_s: float = 20.0
    settle_s: float = 30.0
    drain_s: float = 2.0  # out of rotation before the node stops: requests in flight finish
    # The load's user mix (harness.load_driver.driver.DEFAULT_WEIGHTS). The crud user is left out by
    # default: its metadata PUTs deadlock in Barbican with no upgrade at all (DBDeadlock, HTTP 500;
    # tests/test_barbican_deadlocks.py), which would fail any zero-downtime verdict at random.
    # store_get writes and reads secrets instead; orders and consumers still write.
    weights: dict[str, int] = field(default_factory=lambda: {"octavia": 2, "luks": 4, "crud": 0, "orders": 1,
                                                              "store_get": 3})
    # Zero downtime by default: not one failed request in any phase.
    limits: list[PhaseLimit] = field(default_factory=lambda: [PhaseLimit("error_ratio", 0.0)])
    seed: int | None = None

    def schedule(self, services: list[str]) -> tuple[list, float]:
        """The timeline events of the rollout (windows back to back) and the load's length."""
        from harness.timeline import Event

        starts = [("upgrade_db", {}, self.baseline_s)]
        t = self.baseline_s + self.db_slot_s
        for name in services:
            starts.append(("upgrade_node", {"service": name}, t))
            t += self.node_slot_s
        starts.append(("upgrade_done", {}, t))
        events = [Event(at=at, fault=step, params=params, heal_at=starts[i + 1][2] if i + 1 < len(starts) else None)
                  for i, (step, params, at) in enumerate(starts)]
        return events, t + self.settle_s


# -- the steps, as the timeline runs them -------------------------------------------------------
@dataclass
class _Rollout:
    build: object  # harness.builds.Build of TO
    overrides: dict  # config changes TO's processes start with (never journaled: may hold KEKs)
    drain_s: float
    replaced: list[str] = field(default_factory=list)


_ROLLOUTS: dict[str, _Rollout] = {}


def _rollout(env) -> _Rollout:
    try:
        return _ROLLOUTS[env.run_id]
    except KeyError:
        raise HarnessError(f"{env.run_id}: no rolling upgrade is running in this process") from None


class _Step(Fault):
    # An environment of the harness: its processes are replaced, barbican-manage runs.
    capabilities = frozenset({Capability.API, Capability.NODE_CONTROL, Capability.MANAGE})

    def heal(self, env, undo) -> None:
        """An upgrade step is not undone: its window closes when the next step starts."""


class UpgradeDb(_Step):
    """Rolling upgrade step: TO's barbican-manage db upgrade on the shared database while
    FROM's nodes serve."""

    name = "upgrade_db"

    def inject(self, env, undo) -> None:
        env.provider.nodes[0].manage("db", "upgrade", timeout=600, build=_rollout(env).build)


class ServiceParams(Params):
    service: str  # an API node or a worker


class UpgradeNode(_Step):
    """Rolling upgrade step: one node out of rotation and drained, stopped, started on TO,
    ready (store through it, read back through the next node), back in rotation."""

    name = "upgrade_node"
    Params = ServiceParams

    def inject(self, env, undo) -> None:
        r = _rollout(env)
        provider = env.provider
        service = next(s for s in (*provider.nodes, *provider.workers) if s.name == self.params.service)
        api = service in provider.nodes
        if api:
            rotation.take_out(env.run_dir, service.name)
            time.sleep(r.drain_s)
        service.stop()
        service.processes.clear()
        service.build, service.overrides = r.build, dict(r.overrides)
        service.render()
        service.start()
        provider.on_change()
        service.wait_healthy(120)
        if api:
            env.verify_ready(only=service.name)
            rotation.put_back(env.run_dir, service.name)
        r.replaced.append(service.name)


class UpgradeDone(_Step):
    """Rolling upgrade phase: every node on TO, until the load ends."""

    name = "upgrade_done"

    def inject(self, env, undo) -> None:
        pass


STEPS = (UpgradeDb, UpgradeNode, UpgradeDone)


@contextlib.contextmanager
def _steps_in_catalog():
    """The steps are timeline events only while a rollout runs (`fault list` never shows them)."""
    for cls in STEPS:
        CATALOG[cls.name] = cls
    try:
        yield
    finally:
        for cls in STEPS:
            CATALOG.pop(cls.name, None)


# -- one rolling hop ----------------------------------------------------------------------------
def rolling_upgrade(env, old, new, overrides: dict, plan: RollingPlan, out_dir: Path, progress=None) -> dict:
    """Replace every Barbican process of `env` from `old` to `new` under load, as `plan`
    says. Returns the rollout's record: phases with their figures and verdicts,
    zero_downtime, the load's summary, and what had to be finished after the load."""
    from harness.load_driver.driver import RESULT_FILE, run_load

    provider = env.provider
    provider.prepare_build(new)
    services = [n.name for n in provider.nodes] + [w.name for w in provider.workers]
    events, duration = plan.schedule(services)
    _ROLLOUTS[env.run_id] = _Rollout(new, overrides, plan.drain_s)
    errors: list[str] = []
    try:
        with _steps_in_catalog():
            result = run_load(env, plan.users, plan.spawn_rate, duration, timeline_events=events, out_dir=out_dir,
                              seed=plan.seed, weights=plan.weights, progress=progress, stretch=True)
            load = result.to_dict()
    except HarnessError as exc:  # e.g. a node that never came back: the figures are still there
        errors.append(f"load: {exc}")
        saved = out_dir / RESULT_FILE  # written before statistics and the ledger check
        load = json.loads(saved.read_text()) if saved.is_file() else {"windows": [], "errors": []}
    finally:
        _ROLLOUTS.pop(env.run_id, None)
        rotation.rotation_file(env.run_dir).unlink(missing_ok=True)
    finished = _finish(env, new, overrides)
    record = {"schedule": [{"step": e.fault, "params": e.params, "at_s": e.at} for e in events],
              "duration_s": duration, "plan": {k: v for k, v in plan.__dict__.items() if k != "limits"},
              "limits": [lim.label for lim in plan.limits], "finished_after_load": finished,
              "load": {"out_dir": str(out_dir), "ledger": load.get("ledger"), "errors": load.get("errors", []) + errors,
                       "users": plan.users}}
    record["phases"] = phases(load, Path(out_dir) / "series", old, new, plan.limits)
    step_errors = [w["error"] for w in load.get("windows", []) if w.get("error")]
    ledger_ok = bool((load.get("ledger") or {}).get("ok"))
    record["zero_downtime"] = (all(p["ok"] for p in record["phases"]) and not step_errors and not finished
                               and ledger_ok and not record["load"]["errors"])
    return record


def _finish(env, new, overrides: dict) -> list[str]:
    """Every process on TO after the load: what a failed step left on FROM (or stopped) is
    replaced now, offline. Returns the names it had to replace."""
    provider = env.provider
    left = []
    for service in (*provider.nodes, *provider.workers):
        running = service.processes and all(p.alive() for p in service.processes)
        if service.build is None or service.build.key != new.key or not running:
            left.append(service.name)
            service.stop()
            service.processes.clear()
            service.build, service.overrides = new, dict(overrides)
            service.render()
            service.start()
    provider.on_change()
    for service in (*provider.nodes, *provider.workers):
        if service.name in left:
            with contextlib.suppress(Exception):  # judged by the verification that follows
                service.wait_healthy(120)
    env.ctx.build = new
    for service in (*provider.nodes, *provider.workers):
        service.build = None
    env.save_state()
    return left


def phases(load: dict, series_dir: Path, old, new, limits: list[PhaseLimit]) -> list[dict]:
    """The rollout's phases, back to back from the load's start to its end, with the figures
    of every request started in each and the verdict of each applicable limit."""
    from harness.load_driver.series import AGGREGATED, Series, overlaps

    start, end = load.get("started_wall"), load.get("ended_wall")
    if not start or not end:
        return []
    bounds = [(f"all on FROM {old.version}", "from", start, None)]
    for w in load.get("windows", []):
        if not w.get("injected_wall"):
            continue
        step, node = w["fault"], (w.get("params") or {}).get("service")
        label, kind = {"upgrade_db": (f"db upgrade ({new.version})", "db"),
                       "upgrade_node": (f"{node} → {new.version}", "node"),
                       "upgrade_done": (f"all on TO {new.version}", "to")}[step]
        bounds.append((label, kind, w["injected_wall"], w.get("error")))
    if bounds[-1][1] != "to":  # the load ended first: the rollout was not seen to its end
        bounds.append((f"all on TO {new.version}", "to", end, "the load ended before every process was on TO"))
    series = Series.load(series_dir)
    out = []
    for i, (label, kind, a, error) in enumerate(bounds):
        b = bounds[i + 1][2] if i + 1 < len(bounds) else end
        cell = series.merged(AGGREGATED, [s for s in series.seconds if overlaps(s, a, b)])
        phase = {"phase": label, "kind": kind, "from_s": round(a - start, 1), "to_s": round(b - start, 1),
                 "requests": cell.n, "failures": cell.f, "error_ratio": round(cell.error_ratio, 6),
                 "p50_ms": cell.percentile(0.5), "p95_ms": cell.percentile(0.95),
                 "errors": dict(sorted(cell.errors.items(), key=lambda kv: -kv[1])[:5]),
                 "nodes": cell.nodes, "error": error, "limits": [], "breaches": []}
        for lim in limits:
            if lim.kind not in ("*", kind):
                continue
            phase["limits"].append(lim.label)
            measured = phase["error_ratio"] if lim.metric == "error_ratio" else phase["p95_ms"]
            if not cell.n:
                phase["breaches"].append(f"{lim.label}: no request started in this phase")
            elif measured > lim.limit:
                shown = (f"{cell.f}/{cell.n} requests failed ({measured:.4f})" if lim.metric == "error_ratio"
                         else f"p95 {measured:.0f} ms")
                phase["breaches"].append(f"{lim.label}: {shown}")
        phase["ok"] = not phase["breaches"] and not error
        out.append(phase)
    return out
