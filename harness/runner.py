"""Running a scenario: environment, seed, timeline with continuous probing, heal, verify.

Writes reports/runs/<id>/: timeline.json (every action and probe verdict on one clock),
verdict.json (expected vs observed, time to a correct verdict, pass/fail), ledger.json
(the integrity check), known.json (what the probes relied on), behaviour.json (every probe
round per node and operation, and the recovery after heal: harness.behaviour), logs/
(masked copies).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets as _rand
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness import redact
from harness.behaviour import noise
from harness.behaviour.signature import Recorder
from harness.environment import Environment, make_run_dir, runs_dir
from harness.faults.engine import sigterm_as_interrupt
from harness.ledger import Ledger, LedgerChecker
from harness.progress import Progress
from harness.report.verdicts import Check, VerdictFile, short_verdict
from harness.scenario import Scenario
from harness.seeding import seed
from harness.errors import HarnessError
from harness.faults.engine import FaultEngine, Permission, make_fault
from harness.seeding import SEED_ROLES
from harness.target import Capability
from harness.writes import Writes, clean_up, new_prefix
from harness.timeline import Timeline, Window
from harness.triage.diagnose import Diagnoser, Verdict

SETTLE_TIMEOUT = 90.0


@dataclass
class ScenarioResult:
    name: str
    passed: bool
    run_dir: str
    failures: list[str] = field(default_factory=list)
    observed: dict | None = None
    time_to_verdict_s: float | None = None
    after_heal: dict | None = None
    ledger: dict | None = None
    operations: list[dict] = field(default_factory=list)
    rng_seed: int = 0
    # How late each planned inject and heal happened (seconds; the timeline's own thread).
    drift_s: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class _Writers(threading.Thread):
    """Background writers through the ledger while the timeline runs ("under load")."""

    def __init__(self, env, ledger: Ledger, writers: int, interval: float):
        super().__init__(daemon=True)
        self.env, self.ledger, self.count, self.interval = env, ledger, writers, interval
        self.halt = threading.Event()

    def run(self) -> None:
        threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(self.count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _loop(self, i: int) -> None:
        nodes = [n.name for n in self.env.nodes]
        k = 0
        while not self.halt.wait(self.interval):
            node = nodes[(i + k) % len(nodes)]
            k += 1
            payload = _rand.token_bytes(24)
            try:
                # The client's version discovery is itself a request and fails under the
                # very faults we inject; no POST was sent, so nothing can have been stored.
                client = self.env.barbican(node=node)
            except Exception as exc:  # noqa: BLE001 - recorded as a failed write, the thread goes on
                self.ledger.created(self.ledger.new_name(), payload, self.env.writer_role, node,
                                    "failed", error=f"client: {type(exc).__name__}", tags=["load"])
                continue
            self.ledger.store(client, self.env.writer_role, node, payload, tags=["load"])


def run_scenario(scenario: Scenario, env=None, progress: Progress | None = None,
                 permission: Permission | None = None, barbican: str | None = None) -> ScenarioResult:
    """One scenario on a target: an environment of the harness (brought up from the
    scenario's topology when none is given), an existing cloud or a deployment. On a
    target the harness does not own, what it writes is named under a prefix recorded
    first (harness.writes) and deleted at the end; its faults obey `permission`."""
    progress = progress or Progress()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = runs_dir() / f"scenario-{scenario.name}-{stamp}-{_rand.token_hex(2)}"
    make_run_dir(run_dir)
    result = ScenarioResult(scenario.name, False, str(run_dir), rng_seed=scenario.rng_seed)
    own_env = env is None
    if own_env:
        with progress.step(f"{scenario.name}: environment up"):
            env = Environment.up(scenario.environment_path(), progress=progress, barbican=barbican)
    timeline: list[dict] = []
    behaviour = Recorder(scenario.name, _build_label(env))
    writes = Writes(env.run_dir) if env.foreign else None
    prefix = new_prefix() if env.foreign else None
    try:
        with sigterm_as_interrupt():
            if writes is not None:
                writes.open(prefix, [env.writer_role, *SEED_ROLES(env)], f"scenario {scenario.name}")
            _run(scenario, env, run_dir, result, timeline, progress, permission, prefix, behaviour)
    except Exception as exc:  # noqa: BLE001 - a harness failure fails the scenario, with its reason
        result.failures.append(f"harness error: {type(exc).__name__}: {exc}")
    finally:
        if writes is not None:
            with progress.step(f"{scenario.name}: delete what it wrote ({prefix})"):
                removed = clean_up(env, prefix, [env.writer_role, *SEED_ROLES(env)])
                if not removed["failed"]:
                    writes.close(prefix, removed)
                timeline.append({"t": None, "kind": "clean_up", "prefix": prefix, "removed": removed})
        (run_dir / "timeline.json").write_text(redact.mask(json.dumps(timeline, indent=2)))
        behaviour.write(run_dir)
        result.passed = not result.failures
        _write_result(scenario, run_dir, result)
        _copy_logs(env, run_dir)
        _report(scenario, run_dir, result)
        if own_env:
            env.down()
    return result


def _run(scenario: Scenario, env, run_dir: Path, result: ScenarioResult, timeline: list, progress,
         permission: Permission | None, prefix: str | None, behaviour: Recorder) -> None:
    ledger = Ledger(run_dir / "ledger", prefix=prefix)
    with progress.step(f"{scenario.name}: seed"):
        seeded = seed(env, ledger, scenario.seed.secrets, scenario.seed.tls_containers, scenario.seed.luks_keys)
    seeded.known.save(run_dir / "known.json")
    # Also where `barbican-harness diagnose --run ENV` looks: the environment's last seed.
    seeded.known.save(Path(env.run_dir) / "known.json")
    logs = env.facet(Capability.SERVICE_LOGS).dir() if Capability.SERVICE_LOGS in env.capabilities else None
    diag = Diagnoser(env, known=seeded.known, logs_dir=logs,
                     **({"canary_name": f"{prefix}-triage-canary"} if prefix else {}))
    orders = env.async_orders
    # New tokens, first validated by the baseline round: how long a node trusts a token it
    # cached (token_cache_time) then counts from this run, not from whatever ran before.
    env.renew_sessions()
    baseline = diag.diagnose(orders=orders)
    behaviour.round("before", 0.0, baseline, diag.last_log_lines)
    timeline.append({"t": 0.0, "kind": "baseline", "verdict": _brief(baseline)})
    if baseline.category != "healthy":
        result.failures.append(f"not healthy before the fault: {baseline.category} {baseline.evidence[:2]}")
        return
    expect = scenario.expect
    writers = _Writers(env, ledger, scenario.load.writers, scenario.load.interval)
    if scenario.load.writers:
        writers.start()

    def on_event(kind: str, w: Window) -> None:
        # On the timeline's thread: it acts on time while this thread probes.
        if kind == "injecting" and w.kind == "fault":
            diag.mark_logs()  # only what follows the fault counts as its evidence
        elif kind == "inject":
            timeline.append({"t": round(w.injected_at, 2), "kind": "inject", "fault": w.what, "params": w.params,
                             "fault_id": w.fault_id, "planned_t": w.planned_at, **({"error": w.error} if w.error else {})})
        elif kind == "heal":
            timeline.append({"t": round(w.heal_started_at, 2), "kind": "heal", "fault": w.what,
                             "planned_t": w.planned_heal_at, "healed_t": round(w.healed_at, 2)})
        elif kind == "operation":
            timeline.append({"t": round(w.injected_at, 2), "kind": "operation", "operation": w.what,
                             "result": w.result, "planned_t": w.planned_at, **({"error": w.error} if w.error else {})})

    clock = Timeline(env, scenario.timeline, scenario.end, on_event=on_event, resolve=seeded.resolve,
                     seed=scenario.rng_seed, permission=permission)
    try:
        with progress.step(f"{scenario.name}: timeline ({scenario.end:.0f} s)"):
            clock.start()
            while clock.is_alive():
                active = clock.active()
                if active:
                    injected_at = max(w.in_effect_at for w in active)
                    # The round's phase is the state it starts in (its requests go out then). A heal
                    # that restarts nodes takes seconds: its rounds are neither the fault nor after it.
                    phase = _phase(scenario, clock.now() - injected_at)
                    v = diag.diagnose(orders=orders)
                    t = round(clock.now(), 2)
                    timeline.append({"t": t, "kind": "probe", "verdict": _brief(v)})
                    if any(w.heal_started_at is not None for w in active):
                        phase = "healing"  # the heal began before the round ended: some requests saw it
                    behaviour.round(phase, t, v, diag.last_log_lines)
                    if expect.verdict and result.time_to_verdict_s is None and v.matches(
                            expect.verdict.category, expect.verdict.blast_radius, expect.verdict.affected_nodes) \
                            and (expect.verdict.incident is None or v.incident == expect.verdict.incident):
                        result.time_to_verdict_s = round(t - injected_at, 2)
                        result.observed = v.to_dict()
                    elif result.observed is None or result.time_to_verdict_s is None:
                        result.observed = v.to_dict()
                clock.join(timeout=scenario.probe_interval)
    finally:
        clock.stop()
        clock.join()
        writers.halt.set()
    if clock.error:
        raise clock.error
    result.drift_s = [{"what": w.what, **w.drift_s} for w in clock.windows]
    for w in clock.windows:
        if w.kind == "operation":
            result.operations.append({"operation": w.what, **(w.result or {})})
            if w.error:
                result.failures.append(f"operation {w.what}: {w.error}")
        elif w.error:
            result.failures.append(f"inject {w.what}: {w.error}")
    # Settle: after heal the environment must be healthy again (probes, not /healthcheck).
    with progress.step(f"{scenario.name}: heal and verify"):
        diag.mark_logs()
        deadline = time.monotonic() + SETTLE_TIMEOUT
        healed = max((w.healed_at for w in clock.windows if w.healed_at is not None), default=clock.now())
        after = diag.diagnose(orders=orders)
        behaviour.round("after", clock.now(), after, diag.last_log_lines)
        while after.category != "healthy" and time.monotonic() < deadline:
            time.sleep(1)
            after = diag.diagnose(orders=orders)
            behaviour.round("after", clock.now(), after, diag.last_log_lines)
        restart = after.category != "healthy"
        behaviour.recovery(clock.now() - healed if not restart else None, restart, not restart)
        result.after_heal = _brief(after)
        timeline.append({"t": round(clock.now(), 2), "kind": "after_heal", "verdict": result.after_heal})
        if after.category != "healthy" and not env.foreign and Capability.NODE_CONTROL in env.capabilities:
            # Recorded above as the finding; restart the API nodes so that the next
            # scenario sharing this environment starts from a healthy one.
            for node in env.nodes:
                env.facet(Capability.NODE_CONTROL).restart(node.name)
            timeline.append({"t": round(clock.now(), 2), "kind": "recovery",
                             "action": "restarted every API node after an unhealthy settle"})
        if scenario.load.writers:
            writers.join(timeout=30)
        check = LedgerChecker(ledger, env).check()
    result.ledger = check.summary()
    (run_dir / "ledger.json").write_text(json.dumps(result.ledger, indent=2))
    _judge(scenario, seeded, result, after, check)
    if scenario.delayed_phase_s is not None:
        result.failures += delayed_phase_failures(behaviour.data, scenario.delayed_phase_s)


def _judge(scenario: Scenario, seeded, result: ScenarioResult, after: Verdict, check) -> None:
    expect = scenario.expect
    if expect.verdict:
        if result.time_to_verdict_s is None:
            got = result.observed or {}
            result.failures.append(
                f"verdict: expected {expect.verdict.category}/{expect.verdict.blast_radius} "
                f"nodes {expect.verdict.affected_nodes}, observed {got.get('category')}/{got.get('blast_radius')} "
                f"nodes {got.get('affected_nodes')}")
        elif result.time_to_verdict_s > expect.within_s:
            result.failures.append(f"verdict took {result.time_to_verdict_s} s (target {expect.within_s} s)")
    if expect.healthy_after_heal and after.category != "healthy":
        result.failures.append(f"after heal: {after.category} {after.evidence[:2]}")
    lost_expected = sorted(seeded.resolve("@" + name) for name in expect.integrity.lost)
    lost = sorted(check.lost + check.corrupted)
    seeded_refs = {r for refs in seeded.refs.values() for r in refs}
    lost_seeded = [r for r in lost if r in seeded_refs]
    if lost_seeded != lost_expected:
        result.failures.append(f"integrity: expected lost {lost_expected}, got {lost_seeded}")
    others = [r for r in lost if r not in seeded_refs] + check.resurrected + check.unexpected
    if others:
        result.failures.append(f"integrity: acknowledged writes lost, resurrected or unexpected: {others[:5]}")
    if expect.operation:
        if not result.operations:
            result.failures.append("operation: the scenario expects an operation's outcome, but none ran")
        for op in result.operations:
            for key, want in expect.operation.model_dump(exclude_none=True).items():
                if op.get(key) != want:
                    result.failures.append(f"operation {op['operation']}: {key} = {op.get(key)}, expected {want}")


def _report(scenario: Scenario, run_dir: Path, result: ScenarioResult) -> None:
    """report.html, allure-results/ and junit.xml next to verdict.json."""
    from harness.report import build_report

    try:
        build_report(run_dir)
    except Exception as exc:  # noqa: BLE001 - a run without its report has failed
        result.failures.append(f"report: {type(exc).__name__}: {exc}")
        result.passed = False
        _write_result(scenario, run_dir, result)


def _write_result(scenario: Scenario, run_dir: Path, result: ScenarioResult) -> None:
    """scenario.json (the whole record) and verdict.json (the judgement, one check)."""
    (run_dir / "scenario.json").write_text(redact.mask(json.dumps(result.to_dict(), indent=2)))
    observed = result.observed or {}
    expected = scenario.expect.verdict.model_dump(exclude_none=True) if scenario.expect.verdict else {}
    row = {"scenario": result.name, "expected": short_verdict(expected), "observed": short_verdict(observed),
           "outage or data loss": observed.get("incident"), "evidence": "; ".join(observed.get("evidence") or [])[:300],
           "to verdict (s)": result.time_to_verdict_s,
           "ledger": "nothing lost" if (result.ledger or {}).get("ok") else "LOSS" if result.ledger else "-",
           "result": "PASS" if result.passed else "FAIL"}
    message = "; ".join(result.failures) or f"passed: verdict {observed.get('category', '-')}"
    details = {"expected": expected, "observed": observed, "time_to_verdict_s": result.time_to_verdict_s,
               "failures": result.failures, "after_heal": result.after_heal, "ledger": result.ledger}
    VerdictFile("scenario", result.name, result.passed, list(result.failures),
                [Check("scenario", result.name, result.passed, message, row, details)]).write(run_dir)



def delayed_phase_failures(signature: dict, delayed_phase_s: float) -> list[str]:
    """A scenario that declares a delayed phase must see it: at least one probe round in the
    fault's first phase and one in the delayed phase, and some operation on some node that
    behaves otherwise in the second (else the run proved nothing about the delay)."""
    summary = noise.summarise(signature)
    rounds, during, delayed = summary["rounds"], summary["phases"]["during"], summary["phases"]["delayed"]
    missing = [p for p in ("during", "delayed") if not rounds.get(p)]
    if missing:
        return [f"delayed phase: no probe round in the {' or '.join(missing)} phase (delayed_phase_s "
                f"{delayed_phase_s:g}; rounds per phase {rounds}): the fault must last longer"]
    if not any(cell in during and during[cell]["status"] != v["status"] for cell, v in delayed.items()):
        return [f"delayed phase: every operation behaved as in the fault's first phase after {delayed_phase_s:g} s: "
                "the delay it names did not happen"]
    return []


def _phase(scenario: Scenario, since_inject: float) -> str:
    """The behaviour phase of a probe round that starts `since_inject` seconds into a fault."""
    delayed = scenario.delayed_phase_s
    if delayed is None or since_inject < delayed - scenario.transition_s:
        return "during"
    return "delayed" if since_inject >= delayed else "transition"


def _build_label(env) -> str | None:
    """Which Barbican ran: the environment's build, or what a foreign target says it is."""
    build = getattr(getattr(env, "ctx", None), "barbican_build", None)
    return getattr(build, "label", None)


def _brief(v: Verdict) -> dict:
    return {"category": v.category, "incident": v.incident, "blast_radius": v.blast_radius,
            "affected_nodes": v.affected_nodes, "evidence": v.evidence[:5]}


def _copy_logs(env, run_dir: Path) -> None:
    """Masked copies of the target's logs (the environment may be reused or gone)."""
    if env is None or Capability.SERVICE_LOGS not in env.capabilities:
        return
    src = env.facet(Capability.SERVICE_LOGS).dir()
    dst = run_dir / "logs"
    dst.mkdir(exist_ok=True)
    for path in src.glob("*.log"):
        text = path.read_text(errors="replace")[-400_000:]
        (dst / path.name).write_text(redact.mask(text))


def run_many(scenarios: list[Scenario], progress: Progress | None = None,
             provider: str | None = None, barbican: str | None = None) -> list[ScenarioResult]:
    """The catalog: scenarios with the same topology share one environment. `provider`
    overrides the topology files' (local or docker), `barbican` their Barbican build."""
    progress = progress or Progress()
    results = []
    by_env: dict[Path, list[Scenario]] = {}
    for s in scenarios:
        by_env.setdefault(s.environment_path(), []).append(s)
    for path, group in by_env.items():
        with progress.step(f"environment {path.name} up"):
            env = Environment.up(path, progress=progress, provider=provider, barbican=barbican)
        try:
            for s in group:
                results.append(run_scenario(s, env=env, progress=progress))
        finally:
            env.down()
    return results


def preflight(target, scenarios, permission) -> None:
    """Every fault of every scenario checked against the target and the permission, before
    anything is written (seeded references are checked when they exist: they are the
    harness's own by construction)."""
    engine = FaultEngine(target, permission)
    for s in scenarios:
        for i, e in enumerate(s.timeline):
            if e.operation:
                from harness.operations import NEEDS

                missing = sorted(c.value for c in NEEDS - target.capabilities)
                if missing:
                    raise HarnessError(f"{s.path}: timeline[{i}]: operation {e.operation} needs "
                                       f"{', '.join(missing)}; {target.name} has not")
                continue
            params = {k: ("https://placeholder/v1/secrets/x" if str(v).startswith("@") else v)
                      for k, v in e.params.items()}
            try:
                engine.check(make_fault(e.fault, params), refs=False)
            except HarnessError as exc:
                raise HarnessError(f"{s.path}: timeline[{i}]: {exc}") from None


def run_on_target(scenarios: list[Scenario], target, progress: Progress | None = None,
                  permission: Permission | None = None) -> list[ScenarioResult]:
    """Scenarios on a target that is up already (an environment, a cloud, a deployment)."""
    return [run_scenario(s, env=target, progress=progress, permission=permission) for s in scenarios]


__all__ = ["ScenarioResult", "run_scenario", "run_many", "run_on_target"]
