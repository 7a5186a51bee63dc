"""The campaign: the README's main job, "tell me in five minutes whether this Barbican
survives the incidents we fear".

quick: simple-crypto and pkcs11-softhsm; a round trip between every pair of nodes; a
conformance smoke subset; the four incidents users name first (per-node KEK mismatch,
HSM latency, wrong PIN, ACL removal for the service user), each with its triage verdict
and ledger check; a 30 s Locust load with an HSM-latency window; one report.html.
full: every topology, the whole conformance suite, the whole scenario catalog, a longer load.
preprod: nothing is brought up; on a target that is up (an existing cloud, a deployment, an
environment): round trips through every endpoint, the conformance smoke, the incidents
that change only the harness's own data through the API (each where the target can take
it; the others are listed with the capability they need), a load with thresholds, the
report. Everything it writes there is named under one prefix and deleted at the end.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets as _rand
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness import redact
from harness.conformance_run import run_conformance
from harness.report.verdicts import Check, VerdictFile, short_verdict
from harness.environment import Environment, make_run_dir, runs_dir
from harness.errors import HarnessError
from harness.progress import Progress
from harness.providers import DEFAULT_PROVIDER, check_provider
from harness.timeline import Event

REPO = Path(__file__).resolve().parent.parent
ENVIRONMENTS = REPO / "environments"
SCENARIOS = REPO / "scenarios"
CONFORMANCE_TIMEOUT = 1800

PROFILES = {
    "quick": {
        "environments": ["simple-crypto", "pkcs11-softhsm"],
        "scenarios": ["kek-mismatch-one-node", "hsm-latency-500ms", "hsm-wrong-pin-restart", "acl-removed-octavia"],
        "conformance": {"suites": ["conformance/api"], "k": "version or (secret and (type or round or two_step))"},
        "load": {"environment": "pkcs11-softhsm", "users": 8, "spawn_rate": 8, "duration": 30,
                 "timeline": [Event(at=10, fault="hsm_latency",
                                    params={"functions": ["C_Encrypt", "C_Decrypt"], "ms": 300}, heal_at=20)],
                 # Outside the window the environment is healthy: errors there are a finding.
                 # On the aggregate: one name with few requests would gate on a single 500
                 # (Barbican 23's metadata PUT deadlock, tests/test_barbican_deadlocks.py).
                 "max_error_ratio": ["outside:Aggregated=0.01"]},
    },
    "preprod": {
        "on_target": True,
        "scenarios": ["acl-removed-octavia", "consumed-secret-deleted", "container-member-deleted",
                      "expired-secret-consumed"],
        # Non-destructive: no quota test (it changes the project's quotas).
        "conformance": {"suites": ["conformance/api"],
                        "k": "(version or (secret and (type or round or two_step))) and not quota"},
        "load": {"users": 8, "spawn_rate": 8, "duration": 30, "timeline": [],
                 "max_error_ratio": ["Aggregated=0.01"], "max_p95_ms": ["Aggregated=2000"]},
    },
    "full": {
        "environments": ["simple-crypto", "pkcs11-softhsm", "multi-store", "kmip", "vault", "async-orders",
                         "simple-crypto-secure-rbac"],
        "scenarios": "all",
        "conformance": {"suites": ["conformance/api", "conformance/rbac"]},
        "load": {"environment": "pkcs11-softhsm", "users": 16, "spawn_rate": 8, "duration": 120,
                 "timeline": [Event(at=30, fault="hsm_latency",
                                    params={"functions": ["C_Encrypt", "C_Decrypt"], "ms": 300}, heal_at=50),
                              Event(at=70, fault="node_kill", params={"node": "1"}, heal_at=85)],
                 "max_error_ratio": ["outside:Aggregated=0.01"]},
    },
}


@dataclass
class CampaignResult:
    profile: str
    run_dir: str
    provider: str = DEFAULT_PROVIDER
    passed: bool = False
    round_trips: dict[str, str] = field(default_factory=dict)
    incidents: list[dict] = field(default_factory=list)
    not_applicable: dict[str, str] = field(default_factory=dict)  # incident -> why the target cannot take it
    conformance: dict = field(default_factory=dict)
    load: dict = field(default_factory=dict)
    report: str | None = None
    failures: list[str] = field(default_factory=list)


def round_trips(env, prefix: str = "campaign") -> tuple[list[str], list[str]]:
    """Store through each node, read back through every node, byte for byte. Returns the
    pairs that read back identical and those that did not (a failed check, not an error)."""
    same, differ = [], []
    for writer in env.nodes:
        payload = _rand.token_bytes(32)
        client = env.barbican(node=writer.name)
        # bytes → barbicanclient sends application/octet-stream, base64-encoded.
        ref = client.secrets.create(name=f"{prefix}-roundtrip-{writer.name}", payload=payload).store()
        try:
            for reader in env.nodes:
                got = env.barbican(node=reader.name).secrets.get(ref).payload
                (same if got == payload else differ).append(f"{writer.name} → {reader.name}")
        finally:
            client.secrets.delete(ref)
    return same, differ


def _conformance(target, spec: dict, out_dir: Path, name: str) -> dict:
    result = run_conformance(target, spec["suites"], k=spec.get("k"), out_dir=out_dir,
                             name=f"conformance-{name}", timeout=CONFORMANCE_TIMEOUT,
                             extra=[f"--alluredir={out_dir / 'allure-results'}"])
    return result.to_dict()


def run_campaign(profile: str, progress: Progress | None = None, provider: str = DEFAULT_PROVIDER,
                 target=None, permission=None, barbican: str | None = None) -> CampaignResult:
    """One profile on one provider (local processes or Docker containers, same topologies)
    on the Barbican build `barbican` (default: the harness's own release), or (preprod) on a
    target that is up."""
    from harness.scenario import load_scenario

    if profile not in PROFILES:
        raise HarnessError(f"unknown profile '{profile}'; profiles: {', '.join(PROFILES)}")
    spec = PROFILES[profile]
    if spec.get("on_target") and target is None:
        raise HarnessError(f"profile '{profile}' runs on a target that is up: --cloud NAME [--targets FILE], "
                           "--deployment FILE or --run RUN_ID")
    if target is not None and not spec.get("on_target"):
        raise HarnessError(f"profile '{profile}' brings its own environments up; on a target use --profile preprod")
    if target is not None and barbican:
        raise HarnessError("--barbican chooses the build of the environments a campaign brings up; "
                           "a target that is up already runs its own")
    if barbican:
        from harness.builds import parse_source

        barbican = parse_source(barbican).spec  # a bad source is one line before anything starts
    check_provider(provider)
    progress = progress or Progress()
    where = target.run_id if target is not None else ('' if provider == DEFAULT_PROVIDER else provider)
    out_dir = runs_dir() / (f"campaign-{profile}{'-' + where if where else ''}-"
                            f"{dt.datetime.now():%Y%m%d-%H%M%S}-{_rand.token_hex(2)}")
    make_run_dir(out_dir)
    result = CampaignResult(profile, str(out_dir), provider=provider if target is None else target.name)
    names = spec["scenarios"]
    files = sorted(SCENARIOS.glob("*.yaml")) if names == "all" else [SCENARIOS / f"{n}.yaml" for n in names]
    scenarios = [load_scenario(f) for f in files]  # all checked before anything starts
    if target is not None:
        _on_target(target, spec, scenarios, result, out_dir, progress, permission)
    else:
        _on_environments(spec, provider, scenarios, result, out_dir, progress, barbican)
    result.failures += [f"conformance {n}: {c.get('summary')}" for n, c in result.conformance.items()
                        if not c.get("ok")]
    result.failures += [f"incident {i['incident']}: {'; '.join(i['failures'])}" for i in result.incidents
                        if not i["passed"]]
    result.failures += [f"load: {f}" for f in result.load.get("failures", [])]
    result.passed = not result.failures
    (out_dir / "campaign.json").write_text(redact.mask(json.dumps(asdict(result), indent=2)))
    _verdict_file(result).write(out_dir)
    result.report = _report(out_dir)
    (out_dir / "campaign.json").write_text(redact.mask(json.dumps(asdict(result), indent=2)))
    return result


def _load(target, spec: dict, out_dir: Path, progress, permission=None) -> dict:
    from harness.load_driver import run_load
    from harness.load_driver.cli import build_thresholds

    with progress.step(f"load: {spec['users']} users for {spec['duration']} s on {target.name}"):
        res = run_load(target, users=spec["users"], spawn_rate=spec["spawn_rate"], duration=spec["duration"],
                       timeline_events=spec["timeline"],
                       thresholds=build_thresholds(spec.get("max_error_ratio", []), spec.get("max_p95_ms", [])),
                       out_dir=out_dir / "load", progress=progress, permission=permission)
    summary = res.to_dict()
    return {"summary": summary, "failures": list(summary.get("failures", []) or [])}


def _incident(scenario, r) -> dict:
    expected = scenario.expect.verdict
    observed = r.observed or {}
    return {"incident": scenario.name, "description": scenario.description,
            "expected": expected.model_dump(exclude_none=True) if expected else None,
            "observed": {k: observed.get(k) for k in ("category", "incident", "blast_radius", "affected_nodes")},
            "outage_or_data_loss": observed.get("incident"), "evidence": (observed.get("evidence") or [])[:3],
            "time_to_verdict_s": r.time_to_verdict_s, "ledger_ok": (r.ledger or {}).get("ok"),
            "passed": r.passed, "failures": r.failures, "run_dir": r.run_dir}


def _on_environments(spec: dict, provider: str, scenarios: list, result: CampaignResult, out_dir: Path,
                     progress, barbican: str | None = None) -> None:
    from harness.runner import run_scenario

    # The catalog's provider-specific incidents (a network partition needs containers).
    scenarios = [s for s in scenarios if provider in s.providers]
    envs: dict[str, Environment] = {}
    try:
        for name in spec["environments"]:
            with progress.step(f"{name}: up"):
                envs[name] = Environment.up(ENVIRONMENTS / f"{name}.yaml", progress=progress, provider=provider,
                                            barbican=barbican)
            _round_trips_and_conformance(envs[name], name, spec, result, out_dir, progress)
        for scenario in scenarios:
            topo = scenario.environment_path().stem
            if topo not in envs:
                with progress.step(f"{topo}: up"):
                    envs[topo] = Environment.up(scenario.environment_path(), progress=progress, provider=provider,
                                                barbican=barbican)
            with progress.step(f"incident: {scenario.name}"):
                result.incidents.append(_incident(scenario, run_scenario(scenario, env=envs[topo])))
        load_spec = spec.get("load")
        if load_spec:
            result.load = _load(envs[load_spec["environment"]], load_spec, out_dir, progress)
    finally:
        for env in envs.values():
            env.down()


def _round_trips_and_conformance(target, name: str, spec: dict, result: CampaignResult, out_dir: Path, progress,
                                 prefix: str = "campaign") -> None:
    with progress.step(f"{name}: round trips on every node"):
        same, differ = round_trips(target, prefix)
        result.round_trips[name] = f"{len(same)} byte-identical" + (f", {len(differ)} differ" if differ else "")
        result.failures += [f"round trip {name} {pair}: payload differs" for pair in differ]
    with progress.step(f"{name}: conformance"):
        result.conformance[name] = _conformance(target, spec["conformance"], out_dir, name)


def _on_target(target, spec: dict, scenarios: list, result: CampaignResult, out_dir: Path, progress,
               permission) -> None:
    """The preprod profile: nothing brought up, nothing changed beyond the harness's own
    data unless the permission says so; what it writes is deleted at the end."""
    from harness.runner import preflight, run_scenario
    from harness.writes import Writes, clean_up, new_prefix

    runnable = []
    for scenario in scenarios:
        try:
            preflight(target, [scenario], permission)
            runnable.append(scenario)
        except HarnessError as exc:
            result.not_applicable[scenario.name] = str(exc).split(": ", 1)[-1]
    prefix = new_prefix()
    writes = Writes(target.run_dir) if target.foreign else None
    if writes is not None:
        writes.open(prefix, [target.writer_role], f"campaign {out_dir.name}")
    try:
        _round_trips_and_conformance(target, target.run_id, spec, result, out_dir, progress, prefix)
        for scenario in runnable:
            with progress.step(f"incident: {scenario.name}"):
                r = run_scenario(scenario, env=target, permission=permission)
            result.incidents.append(_incident(scenario, r))
        if spec.get("load"):
            result.load = _load(target, spec["load"], out_dir, progress, permission)
    finally:
        if writes is not None:
            removed = clean_up(target, prefix, [target.writer_role])
            if not removed["failed"]:
                writes.close(prefix, removed)


def campaign_plan(profile: str, target, permission):
    """--dry-run of a campaign: what it would do, on which target."""
    from harness.plan import Plan, load_plan, scenario_plan
    from harness.runner import preflight
    from harness.scenario import load_scenario
    from harness.timeline import Event

    spec = PROFILES.get(profile)
    if spec is None or not spec.get("on_target") or target is None:
        raise HarnessError("--dry-run plans the preprod profile on a target (--profile preprod with --cloud, "
                           "--deployment or --run); the other profiles bring up their own environments")
    plan = Plan(f"campaign {profile} on {target.name}")
    plan.add(f"round trips: one secret stored through each of {len(target.nodes)} endpoint(s) and read back "
             "through every endpoint, then deleted")
    c = spec["conformance"]
    plan.add(f"conformance: {' '.join(c['suites'])} -k '{c.get('k', '')}' (creates and deletes its own secrets)")
    for name in spec["scenarios"]:
        scenario = load_scenario(SCENARIOS / f"{name}.yaml")
        try:
            preflight(target, [scenario], permission)
        except HarnessError as exc:
            plan.add(f"incident {name}: not run ({str(exc).split(': ', 1)[-1]})")
            continue
        plan.lines += [f"incident {name}: {line}" for line in scenario_plan(target, scenario).lines]
    load = spec["load"]
    from harness.load_driver.cli import build_thresholds
    from harness.load_driver.driver import DEFAULT_WEIGHTS

    events = [Event.model_validate(e) if isinstance(e, dict) else e for e in load["timeline"]]
    plan.lines += [f"load: {line}" for line in load_plan(target, load["users"], load["duration"], DEFAULT_WEIGHTS,
                                                         events, build_thresholds(load.get("max_error_ratio", []),
                                                                                  load.get("max_p95_ms", []))).lines]
    return plan


def _verdict_file(result: CampaignResult) -> VerdictFile:
    """Every check of the campaign, one row each: round trips, conformance, incidents (the
    load run's thresholds and ledger are reported from its own result.json)."""
    checks = []
    for name, summary in result.round_trips.items():
        ok = "differ" not in summary
        checks.append(Check("round trip", name, ok, summary,
                            {"check": f"round trips {name}", "observed": summary, "result": "PASS" if ok else "FAIL"}))
    for name, c in result.conformance.items():
        checks.append(Check("conformance", name, bool(c.get("ok")), c.get("summary", ""),
                            {"check": f"conformance {name}", "observed": c.get("summary"),
                             "result": "PASS" if c.get("ok") else "FAIL"},
                            {"failed_tests": c.get("failed_tests", []), "junit": c.get("junit")}))
    for i in result.incidents:
        message = "; ".join(i["failures"]) or f"expected {short_verdict(i['expected'])}, " \
                                               f"observed {short_verdict(i['observed'])}"
        checks.append(Check("incident", i["incident"], i["passed"], message, {
            "check": f"incident {i['incident']}", "expected": short_verdict(i["expected"]),
            "observed": short_verdict(i["observed"]), "outage or data loss": i["outage_or_data_loss"],
            "evidence": "; ".join(i["evidence"])[:300], "to verdict (s)": i["time_to_verdict_s"],
            "ledger": "nothing lost" if i["ledger_ok"] else "LOSS", "result": "PASS" if i["passed"] else "FAIL"},
            {k: i[k] for k in ("expected", "observed", "failures", "run_dir")}))
    return VerdictFile("campaign", f"{result.profile} ({result.provider})", result.passed, result.failures, checks)


def _report(out_dir: Path) -> str:
    from harness.report import build_report

    return str(build_report(out_dir))
