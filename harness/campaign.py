"""The campaign: the README's main job, "tell me in five minutes whether this Barbican
survives the incidents we fear".

quick: simple-crypto and pkcs11-softhsm; a round trip between every pair of nodes; a
conformance smoke subset; the four incidents users name first (per-node KEK mismatch,
HSM latency, wrong PIN, ACL removal for the service user), each with its triage verdict
and ledger check; a 30 s Locust load with an HSM-latency window; one report.html.
full: every topology, the whole conformance suite, the whole scenario catalog, a longer load.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets as _rand
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness import redact
from harness.environment import Environment, runs_dir
from harness.errors import HarnessError
from harness.progress import Progress

REPO = Path(__file__).resolve().parent.parent
ENVIRONMENTS = REPO / "environments"
SCENARIOS = REPO / "scenarios"
CONFORMANCE_TIMEOUT = 1800

PROFILES = {
    "quick": {
        "environments": ["simple-crypto", "pkcs11-softhsm"],
        "scenarios": ["kek-mismatch-one-node", "hsm-latency-500ms", "hsm-wrong-pin-restart", "acl-removed-octavia"],
        "conformance": ["conformance/api", "-k", "version or (secret and (type or round or two_step))"],
        "load": {"environment": "pkcs11-softhsm", "users": 8, "spawn_rate": 8, "duration": 30,
                 "timeline": [{"at": 10, "fault": "hsm_latency",
                               "params": {"functions": ["C_Encrypt", "C_Decrypt"], "ms": 300}, "heal_at": 20}],
                 # Outside the window the environment is healthy: errors there are a finding.
                 # On the aggregate: one name with few requests would gate on a single 500
                 # (Barbican 23's metadata PUT deadlock, tests/test_barbican_deadlocks.py).
                 "max_error_ratio": ["outside:Aggregated=0.01"]},
    },
    "full": {
        "environments": ["simple-crypto", "pkcs11-softhsm", "multi-store", "kmip", "async-orders",
                         "simple-crypto-secure-rbac"],
        "scenarios": "all",
        "conformance": ["conformance/api", "conformance/rbac"],
        "load": {"environment": "pkcs11-softhsm", "users": 16, "spawn_rate": 8, "duration": 120,
                 "timeline": [{"at": 30, "fault": "hsm_latency",
                               "params": {"functions": ["C_Encrypt", "C_Decrypt"], "ms": 300}, "heal_at": 50},
                              {"at": 70, "fault": "node_kill", "params": {"node": "1"}, "heal_at": 85}],
                 "max_error_ratio": ["outside:Aggregated=0.01"]},
    },
}


@dataclass
class CampaignResult:
    profile: str
    run_dir: str
    provider: str = "local"
    passed: bool = False
    round_trips: dict[str, str] = field(default_factory=dict)
    incidents: list[dict] = field(default_factory=list)
    conformance: dict = field(default_factory=dict)
    load: dict = field(default_factory=dict)
    report: str | None = None
    failures: list[str] = field(default_factory=list)


def round_trips(env: Environment) -> tuple[list[str], list[str]]:
    """Store through each node, read back through every node, byte for byte. Returns the
    pairs that read back identical and those that did not (a failed check, not an error)."""
    same, differ = [], []
    for writer in env.nodes:
        payload = _rand.token_bytes(32)
        client = env.barbican(node=writer.name)
        # bytes → barbicanclient sends application/octet-stream, base64-encoded.
        ref = client.secrets.create(name=f"campaign-{writer.name}", payload=payload).store()
        try:
            for reader in env.nodes:
                got = env.barbican(node=reader.name).secrets.get(ref).payload
                (same if got == payload else differ).append(f"{writer.name} → {reader.name}")
        finally:
            client.secrets.delete(ref)
    return same, differ


def _conformance(env: Environment, args: list[str], out_dir: Path) -> dict:
    if not (REPO / args[0]).exists():
        return {"skipped": f"{args[0]} not present"}
    junit = out_dir / f"conformance-{env.ctx.topology.name}.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--barbican-run", str(env.run_dir),
           f"--junitxml={junit}", f"--alluredir={out_dir / 'allure-results'}", *args]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=CONFORMANCE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"exit": "timeout", "summary": f"no result after {CONFORMANCE_TIMEOUT} s",
                "seconds": round(time.monotonic() - start, 1)}
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    return {"exit": proc.returncode, "summary": redact.mask(summary), "seconds": round(time.monotonic() - start, 1)}


PROVIDERS = ("local", "docker")


def run_campaign(profile: str, progress: Progress | None = None, provider: str = "local",
                 barbican: str | None = None) -> CampaignResult:
    """One profile on one provider (local processes or Docker containers, same topologies),
    on the Barbican build `barbican` (default: the harness's own release)."""
    from harness.runner import run_scenario
    from harness.scenario import load_scenario

    if profile not in PROFILES:
        raise HarnessError(f"unknown profile '{profile}'; profiles: {', '.join(PROFILES)}")
    if provider not in PROVIDERS:
        raise HarnessError(f"unknown provider '{provider}'; providers: {', '.join(PROVIDERS)}")
    spec = PROFILES[profile]
    progress = progress or Progress()
    out_dir = runs_dir() / f"campaign-{profile}{'' if provider == 'local' else '-' + provider}-" \
                           f"{dt.datetime.now():%Y%m%d-%H%M%S}-{_rand.token_hex(2)}"
    out_dir.mkdir(parents=True)
    result = CampaignResult(profile, str(out_dir), provider=provider)
    names = spec["scenarios"]
    files = sorted(SCENARIOS.glob("*.yaml")) if names == "all" else [SCENARIOS / f"{n}.yaml" for n in names]
    scenarios = [load_scenario(f) for f in files]  # all checked before anything starts
    # The catalog's provider-specific incidents (a network partition needs containers).
    scenarios = [s for s in scenarios if provider in s.providers]
    envs: dict[str, Environment] = {}
    try:
        for name in spec["environments"]:
            with progress.step(f"{name}: up"):
                envs[name] = Environment.up(ENVIRONMENTS / f"{name}.yaml", progress=progress, provider=provider,
                                            barbican=barbican)
            with progress.step(f"{name}: round trips on every node"):
                same, differ = round_trips(envs[name])
                result.round_trips[name] = f"{len(same)} byte-identical" + (f", {len(differ)} differ" if differ else "")
                result.failures += [f"round trip {name} {pair}: payload differs" for pair in differ]
            with progress.step(f"{name}: conformance"):
                result.conformance[name] = _conformance(envs[name], spec["conformance"], out_dir)
        for scenario in scenarios:
            topo = scenario.environment_path().stem
            if topo not in envs:
                with progress.step(f"{topo}: up"):
                    envs[topo] = Environment.up(scenario.environment_path(), progress=progress, provider=provider,
                                                barbican=barbican)
            with progress.step(f"incident: {scenario.name}"):
                r = run_scenario(scenario, env=envs[topo])
            expected = scenario.expect.verdict
            observed = r.observed or {}
            result.incidents.append({
                "incident": scenario.name, "description": scenario.description,
                "expected": expected.model_dump(exclude_none=True) if expected else None,
                "observed": {k: observed.get(k) for k in ("category", "incident", "blast_radius", "affected_nodes")},
                "outage_or_data_loss": observed.get("incident"), "evidence": (observed.get("evidence") or [])[:3],
                "time_to_verdict_s": r.time_to_verdict_s, "ledger_ok": (r.ledger or {}).get("ok"),
                "passed": r.passed, "failures": r.failures, "run_dir": r.run_dir})
        load_spec = spec.get("load")
        if load_spec:
            result.load = _load(envs, load_spec, out_dir, progress)
    finally:
        for env in envs.values():
            env.down()
    result.failures += [f"conformance {n}: {c.get('summary')}" for n, c in result.conformance.items()
                        if c.get("exit") not in (None, 0)]
    result.failures += [f"incident {i['incident']}: {'; '.join(i['failures'])}" for i in result.incidents
                        if not i["passed"]]
    result.failures += [f"load: {f}" for f in result.load.get("failures", [])]
    result.passed = not result.failures
    (out_dir / "campaign.json").write_text(redact.mask(json.dumps(asdict(result), indent=2)))
    # The report opens with this table: one row per incident.
    (out_dir / "verdict.json").write_text(redact.mask(json.dumps([{
        "incident": i["incident"],
        "expected": _short(i["expected"]),
        "observed": _short(i["observed"]),
        "outage or data loss": i["outage_or_data_loss"],
        "evidence": "; ".join(i["evidence"])[:300],
        "to verdict (s)": i["time_to_verdict_s"],
        "ledger": "nothing lost" if i["ledger_ok"] else "LOSS",
        "result": "PASS" if i["passed"] else "FAIL",
    } for i in result.incidents], indent=2)))
    result.report = _report(out_dir)
    (out_dir / "campaign.json").write_text(redact.mask(json.dumps(asdict(result), indent=2)))
    return result


def _load(envs: dict, spec: dict, out_dir: Path, progress) -> dict:
    from harness.load import run_load
    from harness.load.cli import build_thresholds
    from harness.timeline import TimelineEvent

    env = envs[spec["environment"]]
    events = [TimelineEvent(e["at"], e["fault"], e.get("params", {}), e.get("heal_at")) for e in spec["timeline"]]
    with progress.step(f"load: {spec['users']} users for {spec['duration']} s on {spec['environment']}"):
        res = run_load(env, users=spec["users"], spawn_rate=spec["spawn_rate"], duration=spec["duration"],
                       timeline_events=events, thresholds=build_thresholds(spec.get("max_error_ratio", []), []),
                       out_dir=out_dir / "load", progress=progress)
    summary = res.to_dict()
    return {"summary": summary, "failures": list(summary.get("failures", []) or [])}


def _short(v: dict | None) -> str:
    if not v:
        return "-"
    nodes = v.get("affected_nodes")
    return f"{v.get('category')} / {v.get('blast_radius')}" + (f" ({', '.join(nodes)})" if nodes else "")


def _report(out_dir: Path) -> str:
    from harness.report import build_report

    return str(build_report(out_dir))
