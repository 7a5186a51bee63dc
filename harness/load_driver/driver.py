"""Load with faults on one clock: Locust (subprocesses) + the fault timeline + thresholds
+ the integrity ledger.

    result = run_load(env, users=20, spawn_rate=10, duration=60,
                      timeline_events=[Event(at=15, fault="hsm_latency", params={...}, heal_at=30)],
                      thresholds=[Threshold("error_ratio", 0.01, phase="outside")])

Steps: the writer role makes the consumers' fixtures (TLS containers with an ACL, LUKS
keys; all in the ledger) → the configuration is written (0600) → Locust starts headless
(one process, or a master and K workers) → when it reports the load started, the fault
timeline starts on the same clock → Locust stops after `duration`, the timeline heals
what is left → per-second statistics are joined with the fault windows' wall-clock times
→ thresholds → the ledger is checked through the healed environment → result.json.

Nothing waits without a deadline; on a timeout, an error or Ctrl-C/SIGTERM every Locust
process this call started is stopped and every injected fault healed.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.errors import HarnessError
from harness.ledger import Ledger, LedgerChecker
from harness.load_driver.fixtures import make_fixtures
from harness.load_driver.hsm import HsmSampler
from harness.load_driver.locust_procs import LocustProcesses
from harness.load_driver.rotation import rotation_file
from harness.load_driver.series import AGGREGATED, Series, overlaps
from harness.load_driver.thresholds import Threshold, Verdict, evaluate
from harness.progress import Progress
from harness.redact import mask
from harness.target import Capability
from harness.timeline import Event, Timeline
from harness.wait import wait_until
from harness.writes import Writes, clean_up, new_prefix

CONFIG_ENV = "BARBICAN_LOAD_CONFIG"
RESULT_FILE = "result.json"
DEFAULT_WEIGHTS = {"octavia": 2, "luks": 4, "crud": 3, "orders": 1, "store_get": 0}


@dataclass
class LoadResult:
    out_dir: Path
    params: dict[str, Any]
    started_wall: float | None = None
    ended_wall: float | None = None
    windows: list[dict] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    ledger: dict | None = None
    phase_stats: dict = field(default_factory=dict)
    window_stats: list[dict] = field(default_factory=list)
    per_second: list[dict] = field(default_factory=list)
    per_name: dict[str, list] = field(default_factory=dict)
    locust: dict = field(default_factory=dict)
    hsm: dict | None = None
    environment: dict = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def breached(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.passed]

    @property
    def ledger_ok(self) -> bool:
        return self.ledger is None or bool(self.ledger.get("ok"))

    @property
    def ok(self) -> bool:
        return not self.breached and self.ledger_ok and not self.errors

    @property
    def failures(self) -> list[str]:
        """Everything that makes the run fail: threshold breaches, data loss, run errors."""
        out = [c.message for v in self.breached for c in v.breaches]
        if not self.ledger_ok:
            led = self.ledger or {}
            out.append("ledger: " + ", ".join(f"{k} {len(led.get(k, []))}" for k in
                                              ("lost", "corrupted", "resurrected", "unexpected") if led.get(k)))
        return out + list(self.errors)

    def to_dict(self) -> dict:
        return {
            "out_dir": str(self.out_dir), "params": self.params, "ok": self.ok,
            "breaches": [c.message for v in self.breached for c in v.breaches], "failures": self.failures,
            "started_wall": self.started_wall, "ended_wall": self.ended_wall, "windows": self.windows,
            "verdicts": [v.to_dict() for v in self.verdicts], "ledger": self.ledger,
            "phase_stats": self.phase_stats, "window_stats": self.window_stats,
            "per_second": self.per_second, "per_name": self.per_name, "locust": self.locust,
            "hsm": self.hsm, "environment": self.environment, "errors": self.errors,
        }

    def save(self) -> Path:
        path = self.out_dir / RESULT_FILE
        path.write_text(mask(json.dumps(self.to_dict(), indent=1)))
        return path


def default_out_dir(env) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")[:-3]
    return env.run_dir / "load" / stamp


def _write_private(path: Path, data: dict) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)


def _roles(env) -> dict[str, str]:
    writer = env.writer_role
    return {"writer": writer, "luks": writer, "service": "service", "order_admin": "admin"}


# User classes that need a role beyond the writer, and the fixtures they read.
NEEDS_ROLE = {"octavia": "service", "orders": "order_admin"}


def usable_weights(env, weights: dict[str, int]) -> tuple[dict[str, int], list[str]]:
    """On a target whose targets file lacks a role, the classes needing it are switched off
    (and said so): an existing cloud may not give the harness an Octavia or admin user."""
    roles, notes, out = _roles(env), [], dict(weights)
    for cls, key in NEEDS_ROLE.items():
        if out.get(cls) and roles[key] not in env.roles:
            out[cls] = 0
            notes.append(f"user class '{cls}' off: {env.name} has no role '{roles[key]}'")
    if not any(out.values()):
        raise HarnessError(f"load: no user class can run on {env.name} ({'; '.join(notes)})")
    return out, notes


def run_load(env, users: int, spawn_rate: float, duration: float, workers: int = 0,
             timeline_events: list[Event] | tuple = (), thresholds: list[Threshold] | tuple = (),
             out_dir: Path | str | None = None, *, weights: dict[str, int] | None = None, seed: int | None = None,
             wait: tuple[float, float] = (0.1, 0.5), request_timeout: float = 15.0,
             fixtures: tuple[int, int] = (4, 16), consumer_probability: float = 0.2,
             stop_timeout: float = 30.0, start_timeout: float = 120.0, check_ledger: bool = True,
             progress: Progress | None = None, permission=None, stretch: bool = False) -> LoadResult:
    """Locust load on `env` for `duration` seconds, with `timeline_events` on the one
    timeline. stretch: a late timeline (a step that took longer than its slot) makes the
    load longer by as much, at most by `duration`, so that the tail after the last event
    keeps its planned length."""
    from harness.faults.engine import FaultEngine, make_fault, sigterm_as_interrupt

    if users < 1 or spawn_rate <= 0 or duration <= 0 or workers < 0:
        raise HarnessError("load: users >= 1, spawn rate > 0, duration > 0 and workers >= 0 are required")
    progress = progress or Progress()
    out = Path(out_dir) if out_dir else default_out_dir(env)
    out.mkdir(parents=True, exist_ok=True)
    seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
    weights = {**DEFAULT_WEIGHTS, **(weights or {})}
    events = sorted(timeline_events, key=lambda e: e.at)
    for e in events:
        if e.at >= duration:
            raise HarnessError(f"load: fault '{e.fault}' at {e.at:g} s is after the end of the load ({duration:g} s)")
        if e.operation:
            raise HarnessError(f"load: operation '{e.operation}': a load timeline takes faults only")
        # Before anything starts: a fault this target cannot take (or may not, on a target
        # the harness does not own) is refused now.
        FaultEngine(env, permission).check(make_fault(e.fault, e.params))
    result = LoadResult(out, {
        "users": users, "spawn_rate": spawn_rate, "duration": duration, "workers": workers, "seed": seed,
        "weights": weights, "wait": list(wait), "thresholds": [t.to_dict() for t in thresholds],
        "timeline": [e.model_dump(exclude_none=True) for e in events],
        "run_id": env.run_id, "started": dt.datetime.now(dt.timezone.utc).isoformat()})
    result.environment = env.facts()

    roles = _roles(env)
    weights, notes = usable_weights(env, weights)
    result.params["weights"], result.params["notes"] = weights, notes
    prefix = new_prefix() if env.foreign else None
    ledger = Ledger(out / "ledger", prefix=prefix)
    writes = Writes(env.run_dir) if env.foreign else None
    used_roles = sorted({r for r in roles.values() if r in env.roles})
    if writes is not None:
        writes.open(ledger.prefix, used_roles, f"load {out.name}")
    with progress.step("load fixtures: TLS containers with ACL, LUKS keys"):
        reader_id = env.session(roles["service"]).get_user_id() if weights.get("octavia") else None
        fx = make_fixtures(env, ledger, writer=roles["writer"], reader_user_id=reader_id,
                           containers=fixtures[0] if reader_id else 0, luks_keys=fixtures[1])
    config_path = out / "load-config.json"
    started_file = out / "started"
    stretch_file = out / "stretch" if stretch and events else None
    series_dir = out / "series"
    _write_private(config_path, {
        "run_id": env.run_id, "keystone_url": env.keystone_url,
        "nodes": [{"name": n.name, "url": n.url} for n in env.nodes],
        "credentials": {role: {"username": c.username, "project": c.project, "password": c.password,
                               "domain": c.domain}
                        for role, c in env.credentials.items() if role in used_roles},
        "roles": roles, "weights": weights, "seed": seed, "wait": list(wait), "timeout": request_timeout,
        "consumer_probability": consumer_probability, "fixtures": fx.to_dict(),
        "ledger_dir": str(ledger.directory), "series_dir": str(series_dir), "started_file": str(started_file),
        "run_time": duration, "rotation_file": str(rotation_file(env.run_dir)),
        "stretch_file": str(stretch_file) if stretch_file else None, "max_stretch": duration,
    })

    sampler = HsmSampler(env.facet(Capability.HSM_SHIM)) if Capability.HSM_SHIM in env.capabilities else None
    # Node URLs are IP literals: resolve them in-line rather than through gevent's thread pool.
    procs = LocustProcesses(out, env.environ(**{CONFIG_ENV: str(config_path), "GEVENT_RESOLVER": "block"}), users=users,
                            spawn_rate=spawn_rate, host=env.nodes[0].url, workers=workers,
                            stop_timeout=stop_timeout)
    timeline: Timeline | None = None
    try:
        with sigterm_as_interrupt():
            if sampler:
                sampler.start()
            with progress.step(f"Locust start ({'master + %d workers' % workers if workers else 'one process'})"):
                procs.start()
                result.locust["pids"] = procs.pids()
                result.started_wall = procs.wait_started(started_file, start_timeout)

            def stretched() -> float:
                return min(timeline.lateness(), duration) if timeline and stretch_file else 0.0

            if events:
                hook = {"on_event": _stretcher(stretch_file, stretched)} if stretch_file else {}
                timeline = Timeline(env, list(events), duration, seed=seed, permission=permission,
                                    stretch=stretch_file is not None, **hook)
                timeline.start()

            faults = ", ".join(e.fault for e in events) or "no faults"
            with progress.step(f"load: {users} users for {duration:g} s{' or longer' if stretch_file else ''} "
                               f"({faults})"):
                code = procs.wait(duration + stop_timeout + 60, extra=stretched)
            result.ended_wall = time.time()
            result.locust["exit_code"] = code
            result.locust["worker_exit_codes"] = procs.worker_codes()
            if stretch_file:
                result.params["stretched_s"] = round(stretched(), 1)
            if code is None:
                result.errors.append(f"Locust did not stop within {duration + stretched() + stop_timeout + 60:.0f} s: "
                                     "killed")
            elif code != 0:
                result.errors.append(f"Locust exited {code}: {procs.tail(procs.master)}")
            if timeline is not None:
                with progress.step("heal: faults still injected"):
                    timeline.stop()
                    timeline.join(timeout=180)
                    if timeline.is_alive():
                        result.errors.append("the fault timeline did not finish healing within 180 s")
                    if timeline.error:
                        result.errors.append(f"fault timeline: {type(timeline.error).__name__}: {timeline.error}")
    except BaseException:
        procs.stop()
        if timeline is not None:
            timeline.stop()
            timeline.join(timeout=180)
        raise
    finally:
        config_path.unlink(missing_ok=True)  # credentials: not left behind in the report directory
        if sampler:
            result.hsm = sampler.stop()
            (out / "hsm_stats.json").write_text(json.dumps(result.hsm, indent=1))
        if timeline is not None:
            result.windows = [w.to_dict() for w in timeline.windows]
            for w in result.windows:
                if w.get("error"):
                    result.errors.append(f"fault {w['fault']} could not be injected: {w['error']}")
        result.save()

    with progress.step("statistics: per second, inside and outside fault windows"):
        _statistics(result, Series.load(series_dir), list(thresholds))
        result.locust["stats"] = read_locust_stats(out / "locust_stats.csv")
        result.locust["failures"] = read_locust_failures(out / "locust_failures.csv")
    if check_ledger:
        with progress.step("ledger: every acknowledged write read back through the healed environment"):
            _wait_serving(env, roles["writer"])
            checked = LedgerChecker(ledger, env).check()
            result.ledger = {**checked.summary(), "entries": _ledger_counts(ledger), "prefix": ledger.prefix}
    if writes is not None:
        with progress.step(f"delete what the load wrote ({ledger.prefix})"):
            removed = clean_up(env, ledger.prefix, used_roles)
            result.params["cleaned_up"] = removed
            if removed["failed"]:
                result.errors.append(f"clean-up: {removed['failed']} resource(s) under {ledger.prefix} not deleted")
            else:
                writes.close(ledger.prefix, removed)
    result.save()
    return result


def _stretcher(path: Path, stretched: Callable[[], float]):
    """A timeline hook that tells Locust (through `path`) how much longer to run, once
    each event has begun: `stretched()` seconds."""
    def on_event(kind: str, window) -> None:
        if kind in ("inject", "operation"):
            tmp = path.with_suffix(".tmp")
            tmp.write_text(repr(stretched()))
            tmp.replace(path)  # Locust never reads half a number
    return on_event


def _wait_serving(env, role: str, timeout: float = 60.0) -> None:
    """Before the ledger check, every node answers again (a killed node was restarted)."""
    sess = env.session(role)
    for node in env.nodes:
        wait_until(lambda node=node: sess.get(node.url + "/v1/secrets", params={"limit": 1}, raise_exc=False,
                                              timeout=10).status_code == 200,
                   timeout=timeout, interval=0.5, what=f"ledger check: {node.name} answers after heal")


def _ledger_counts(ledger: Ledger) -> dict:
    final: dict[tuple[str, str], str] = {}
    for e in ledger.entries():
        final[(e.op, e.name)] = e.outcome  # an in-flight record is completed by a later one
    counts: dict[str, int] = {}
    for (op, _), outcome in final.items():
        counts[f"{op}_{outcome}"] = counts.get(f"{op}_{outcome}", 0) + 1
    return dict(sorted(counts.items()))


def _cell_stats(cell) -> dict:
    return {"requests": cell.n, "failures": cell.f, "error_ratio": round(cell.error_ratio, 6),
            "p50_ms": cell.percentile(0.5), "p95_ms": cell.percentile(0.95),
            "avg_ms": round(cell.rt_sum / cell.n, 2) if cell.n else None, "errors": dict(cell.errors),
            "nodes": cell.nodes}


def _statistics(result: LoadResult, series: Series, thresholds: list[Threshold]) -> None:
    start = result.started_wall or (series.seconds[0] if series.seconds else 0)
    end = result.ended_wall or start
    windows = [w for w in result.windows if w.get("injected_wall") and not w.get("error")]
    spans = [(w["injected_wall"], w.get("healed_wall") or end) for w in windows]
    seconds = series.seconds
    inside = [s for s in seconds if any(overlaps(s, a, b) for a, b in spans)]
    outside = [s for s in seconds if s not in set(inside)]
    names = series.names + [AGGREGATED]
    phases = {"all": seconds, "inside": inside, "outside": outside}
    result.phase_stats = {phase: {n: _cell_stats(series.merged(n, secs)) for n in names}
                          for phase, secs in phases.items()}
    result.window_stats = []
    for w, (a, b) in zip(windows, spans):
        secs = [s for s in seconds if overlaps(s, a, b)]
        result.window_stats.append({"fault": w["fault"], "params": w["params"], "from": a - start, "to": b - start,
                                    "stats": {n: _cell_stats(series.merged(n, secs)) for n in names}})
    for w in result.windows:
        for key in ("injected_wall", "healed_wall"):
            if w.get(key):
                w[key.replace("_wall", "_rel")] = round(w[key] - start, 3)
    result.per_second = []
    for s in seconds:
        c = series.cells.get((s, AGGREGATED))
        if c is None:
            continue
        result.per_second.append({"t": round(s - start, 3), "wall": s, "n": c.n, "f": c.f,
                                  "p50": c.percentile(0.5), "p95": c.percentile(0.95),
                                  "errors": dict(c.errors)})
    result.per_name = {n: [[round(s - start, 3), c.n, c.f, c.percentile(0.95)]
                           for s in seconds if (c := series.cells.get((s, n))) is not None]
                       for n in series.names}
    result.verdicts = evaluate(thresholds, result.phase_stats, [w["fault"] for w in windows])


def read_locust_stats(path: Path) -> list[dict]:
    """Locust's merged totals (the master's, in distributed mode)."""
    if not path.exists():
        return []
    def num(row: dict, key: str) -> float | None:
        try:
            return float(row.get(key) or 0)
        except ValueError:
            return None  # Locust writes "N/A" for percentiles it has no data for

    with open(path, newline="") as f:
        return [{"type": row.get("Type", ""), "name": row.get("Name", ""),
                 "requests": int(num(row, "Request Count") or 0), "failures": int(num(row, "Failure Count") or 0),
                 "median_ms": num(row, "Median Response Time"), "avg_ms": num(row, "Average Response Time"),
                 "p95_ms": num(row, "95%"), "rps": num(row, "Requests/s")} for row in csv.DictReader(f)]


def read_locust_failures(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{"method": r.get("Method", ""), "name": r.get("Name", ""), "error": mask(r.get("Error", ""))[:300],
                 "occurrences": int(r.get("Occurrences") or 0)} for r in csv.DictReader(f)]
