"""barbican-harness: the command line.

Every HarnessError is printed as its message (it names the file, field, service or
package at fault) with exit code 2; unexpected errors keep their traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from harness.errors import HarnessError
from harness.progress import print_table
from harness.providers import DEFAULT_PROVIDER, PROVIDERS, check_provider

app = typer.Typer(help="Stand up real Barbican environments, inject faults, check and report.",
                  no_args_is_help=True, add_completion=False)
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _fail(exc: HarnessError) -> None:
    console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
    raise typer.Exit(2)


def _run_id(param: typer.CallbackParam, value: Optional[str]) -> Optional[str]:
    """Every run id a command takes names a directory under reports/runs/, nothing else."""
    from harness.environment import checked_run_id

    try:
        return checked_run_id(value, param.opts[0] if param.opts and param.opts[0].startswith("-") else "RUN_ID")
    except HarnessError as exc:
        _fail(exc)


# -- the target of a command: an environment (--run), an existing cloud, a deployment -------
RUN_OPT = typer.Option(None, "--run", callback=_run_id,
                       help="Run id of an environment of this harness (default: the newest up)")
CLOUD_OPT = typer.Option(None, "--cloud", help="An existing cloud (a clouds.yaml name)")
TARGETS_OPT = typer.Option(None, "--targets", help="With --cloud: the targets file naming a cloud per role")
DEPLOYMENT_OPT = typer.Option(None, "--deployment", help="A deployment file (Kolla-style containers)")
DESTRUCTIVE_OPT = typer.Option(False, "--allow-destructive",
                               help="On a cloud or deployment: allow changes beyond API calls on the harness's data")
MAX_NODES_OPT = typer.Option(1, "--max-nodes", min=1, help="On a cloud or deployment: nodes one fault may touch")
DRY_RUN_OPT = typer.Option(False, "--dry-run", help="Print the plan and change nothing")
BARBICAN_OPT = typer.Option(None, "--barbican", help="Barbican build: pypi:VERSION, wheel:PATH, sdist:PATH or "
                                                     "git:PATH[@REF] (default: the topology's, else the harness's)")


@app.command()
def up(topology: Path = typer.Argument(..., help="Topology file, e.g. environments/simple-crypto.yaml"),
       json_out: bool = typer.Option(False, "--json", help="Print one JSON document for scripts"),
       provider: Optional[str] = typer.Option(None, help="Override the topology's provider"),
       keep_on_failure: bool = typer.Option(False, help="Leave a failed environment running to debug it"),
       barbican: Optional[str] = BARBICAN_OPT) -> None:
    """Bring an environment up and leave it running; prints its endpoints."""
    from harness.environment import Environment
    from harness.progress import RichProgress

    try:
        with RichProgress(console) as progress:
            env = Environment.up(topology, progress=progress, provider=provider,
                                 keep_on_failure=keep_on_failure, barbican=barbican)
    except HarnessError as exc:
        _fail(exc)
    summary = env.summary()
    if json_out:
        out.print_json(json.dumps(summary))
        return
    _print_summary(summary)


def _print_summary(summary: dict) -> None:
    table = Table(title=f"{summary['run_id']} ({summary['status']})")
    table.add_column("service")
    table.add_column("endpoint / pid")
    table.add_row("keystone", summary.get("keystone_url") or "")
    for node in summary["nodes"]:
        table.add_row(node["name"], f"{node['endpoint']}  pid {node['pid']}")
    print_table(out, table)
    if summary.get("clouds_yaml"):
        clouds = summary["clouds"]
        example = next(iter(clouds.get("creator", clouds.get("member", {})).values()), "")
        out.print(f"clouds.yaml: {summary['clouds_yaml']}")
        out.print(f"  OS_CLIENT_CONFIG_FILE={summary['clouds_yaml']} openstack --os-cloud {example} secret list")
    out.print(f"run dir: {summary['run_dir']}")


@app.command()
def status(run_id: Optional[str] = typer.Argument(None, callback=_run_id,
                                                  help="Run id (default: newest environment up)"),
           json_out: bool = typer.Option(False, "--json")) -> None:
    """Show an environment's endpoints and whether each process still runs."""
    from harness.environment import Environment

    try:
        env = Environment.attach(run_id)
    except HarnessError as exc:
        _fail(exc)
    summary = env.summary()
    if json_out:
        out.print_json(json.dumps(summary))
        return
    _print_summary(summary)
    table = Table(title="processes")
    for col in ("name", "pid", "ports", "running"):
        table.add_column(col)
    for p in summary["processes"]:
        table.add_row(p["name"], str(p["pid"]), ",".join(map(str, p["ports"])), "yes" if p["running"] else "no")
    print_table(out, table)


@app.command()
def logs(node: str = typer.Argument(..., help="Service name, e.g. barbican-1, keystone, mariadb"),
         run_id: Optional[str] = typer.Option(None, "--run", callback=_run_id),
         lines: int = typer.Option(50, "-n", help="How many lines from the end")) -> None:
    """Print the end of a service's logs (secrets masked)."""
    from harness.environment import find_run_dir
    from harness.procs import log_tail

    try:
        logs_dir = find_run_dir(run_id) / "logs"
    except HarnessError as exc:
        _fail(exc)
    files = sorted(logs_dir.glob(f"{node}*.log"))
    if not files:
        available = sorted({p.stem.split("-app")[0] for p in logs_dir.glob("*.log")})
        _fail(HarnessError(f"no logs for '{node}' in {logs_dir}; available: {', '.join(available)}"))
    for f in files:
        out.rule(f.name)
        out.print(log_tail(f, lines), markup=False, highlight=False)


@app.command()
def down(run_id: Optional[str] = typer.Argument(None, callback=_run_id,
                                                help="Run id (default: newest environment up)")) -> None:
    """Stop every process of an environment. Idempotent; works after the CLI was killed."""
    from harness.environment import Environment

    try:
        env = Environment.attach(run_id)
    except HarnessError as exc:
        _fail(exc)
    busy = env.down()
    left = [p for p in env.processes() if p["running"]]
    if left or busy:
        console.print(f"[red]still running:[/red] {left} busy ports: {busy}")
        raise typer.Exit(1)
    out.print(f"{env.run_id}: down")


@app.command()
def campaign(profile: str = typer.Option("quick", help="quick, full, or preprod (on a target that is up)"),
             provider: str = typer.Option(DEFAULT_PROVIDER, help=f"one of: {', '.join(PROVIDERS)}"),
             run_id: Optional[str] = typer.Option(None, "--run", callback=_run_id,
                                                  help="preprod: an environment of this harness"),
             cloud: Optional[str] = CLOUD_OPT, targets: Optional[Path] = TARGETS_OPT,
             deployment: Optional[Path] = DEPLOYMENT_OPT, allow_destructive: bool = DESTRUCTIVE_OPT,
             max_nodes: int = MAX_NODES_OPT, dry_run: bool = DRY_RUN_OPT,
             barbican: Optional[str] = BARBICAN_OPT) -> None:
    """The main job: environments up, round trips and a conformance smoke on every node and
    store, four incidents with verdicts and the ledger, load with a fault window, report.
    --profile preprod runs on a target that is up (--cloud, --deployment, --run) instead."""
    from harness.campaign import PROFILES, run_campaign
    from harness.progress import RichProgress

    try:
        target = _target(run_id, cloud, targets, deployment, acts="campaign") \
            if (run_id or cloud or deployment) else None
        permission = _permission(allow_destructive, max_nodes)
        if dry_run:
            from harness.campaign import campaign_plan

            out.print(campaign_plan(profile, target, permission).render(), markup=False, highlight=False)
            return
        if profile not in PROFILES:
            raise HarnessError(f"--profile '{profile}': profiles: {', '.join(PROFILES)}")
        with RichProgress(console) as progress:
            result = run_campaign(profile, progress, provider=provider, target=target, permission=permission,
                                  barbican=barbican)
    except HarnessError as exc:
        _fail(exc)
    print_campaign(result, profile)
    raise typer.Exit(0 if result.passed else 1)


def print_campaign(result, profile: str) -> None:
    """The campaign's incident table, round trips, load and failures (stdout)."""
    table = Table(title=f"campaign ({profile}, {result.provider}): incidents")
    for col in ("incident", "expected", "observed", "outage or data loss", "evidence", "result"):
        table.add_column(col)
    for i in result.incidents:
        exp = i["expected"] or {}
        table.add_row(i["incident"], f"{exp.get('category', '-')} / {exp.get('blast_radius', '-')}",
                      f"{i['observed'].get('category')} / {i['observed'].get('blast_radius')}",
                      str(i["outage_or_data_loss"]), (i["evidence"] or [""])[0][:80],
                      "[green]PASS[/green]" if i["passed"] else "[red]FAIL[/red]")
    print_table(out, table)
    for name, why in result.not_applicable.items():
        out.print(f"not run on this target: {name}: {why}", markup=False, highlight=False)
    for name, rt in result.round_trips.items():
        out.print(f"{name}: round trips {rt}; conformance {result.conformance.get(name, {}).get('summary', '-')}")
    if result.load:
        summary = result.load.get("summary", {})
        ledger = summary.get("ledger") or {}
        verdicts = "; ".join(v["message"] for v in summary.get("verdicts", [])) or "no thresholds"
        out.print(f"load: {'ok' if summary.get('ok') else 'FAIL'}; {verdicts}; ledger: "
                  f"{ledger.get('verified', 0)}/{ledger.get('acknowledged', 0)} acknowledged writes verified",
                  highlight=False)
    for failure in result.failures:
        out.print(f"[red]FAIL[/red] {failure}", markup=True, highlight=False)
    out.print(f"results: {Path(result.run_dir) / 'campaign.json'}" + (f"\nreport: {result.report}" if result.report else ""))


fault_app = typer.Typer(help="Inject and heal faults on a running environment.", no_args_is_help=True)
app.add_typer(fault_app, name="fault")


def _parse_params(node: Optional[str], params: list[str]) -> dict:
    out: dict = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(HarnessError(f"--param '{item}': expected key=value"))
        try:
            out[key] = json.loads(value)  # numbers, booleans, lists: ["C_Encrypt","C_Decrypt"]
        except json.JSONDecodeError:
            out[key] = value
    if node is not None:
        out["node"] = node
    return out


@fault_app.command("list")
def fault_list(as_json: bool = typer.Option(False, "--json", help="one JSON document, for scripts")) -> None:
    """Every fault: its parameters and the incident it models."""
    from harness.faults import CATALOG

    if as_json:
        out.print_json(json.dumps([{"name": name, "parameters": cls.parameters(), "incident": cls.incident(),
                                    "needs": cls.needs()}
                                   for name, cls in sorted(CATALOG.items())]))
        return
    table = Table(show_lines=True)
    table.add_column("fault", no_wrap=True)  # names are what people copy into commands
    for col in ("parameters", "needs", "incident it models"):
        table.add_column(col)
    for name, cls in sorted(CATALOG.items()):
        params = "\n".join(f"{k}: {v}" for k, v in cls.parameters().items()) or "-"
        table.add_row(name, params, "\n".join(cls.needs()) or "api", cls.incident())
    out.print(table)


def _target(run_id=None, cloud=None, targets=None, deployment=None, acts: str | None = None):
    """The one way the CLI opens a target; a state directory's id (cloud-NAME,
    deployment-NAME) reopens that cloud or deployment. `acts`: the command acts on the
    target, so an environment of the harness that is not up is refused here, in one line,
    before anything changes (heals do not pass it: they work on a run that is down)."""
    from harness.environment import runs_dir
    from harness.targets import TARGET_FILE, open_target, reopen_target

    if run_id and (runs_dir() / run_id / TARGET_FILE).is_file() and not (cloud or deployment):
        return reopen_target(runs_dir() / run_id)
    target = open_target(run_id, cloud, targets, deployment)
    if acts and not target.foreign:
        target.require_up(acts)
    return target


def _permission(allow_destructive: bool, max_nodes: int):
    from harness.faults.engine import Permission

    return Permission(allow_destructive=allow_destructive, max_nodes=max_nodes)


@fault_app.command("inject")
def fault_inject(name: str, node: Optional[str] = typer.Option(None, "--node"),
                 param: list[str] = typer.Option([], "--param", help="key=value (repeatable)"),
                 run_id: Optional[str] = RUN_OPT, cloud: Optional[str] = CLOUD_OPT,
                 targets: Optional[Path] = TARGETS_OPT, deployment: Optional[Path] = DEPLOYMENT_OPT,
                 allow_destructive: bool = DESTRUCTIVE_OPT, max_nodes: int = MAX_NODES_OPT,
                 dry_run: bool = DRY_RUN_OPT) -> None:
    """Inject a fault and leave it in place (heal it with `fault heal`)."""
    from harness.faults.engine import FaultEngine, make_fault
    from harness.plan import fault_plan

    try:
        target = _target(run_id, cloud, targets, deployment, acts=f"fault inject {name}")
        engine = FaultEngine(target, _permission(allow_destructive, max_nodes))
        fault = make_fault(name, _parse_params(node, param))
        engine.check(fault)
        if dry_run:
            out.print(fault_plan(target, fault).render(), markup=False, highlight=False)
            return
        fault_id = engine.inject(name, _parse_params(node, param))
    except HarnessError as exc:
        _fail(exc)
    out.print(f"injected {fault_id} (heal: barbican-harness fault heal {fault_id} --run {target.run_id})")


@fault_app.command("heal")
def fault_heal(fault_id: Optional[str] = typer.Argument(None), all_: bool = typer.Option(False, "--all"),
               run_id: Optional[str] = RUN_OPT, cloud: Optional[str] = CLOUD_OPT,
               targets: Optional[Path] = TARGETS_OPT, deployment: Optional[Path] = DEPLOYMENT_OPT) -> None:
    """Heal one injected fault, or all of them."""
    from harness.faults.engine import FaultEngine

    if not fault_id and not all_:
        _fail(HarnessError("name a fault id or pass --all"))
    try:
        engine = FaultEngine(_target(run_id, cloud, targets, deployment))
        healed = engine.heal_all() if all_ else (engine.heal(fault_id) or [fault_id])
    except HarnessError as exc:
        _fail(exc)
    _print_healed(engine, healed)


def _print_healed(engine, ids: list[str]) -> None:
    """What a heal did: healed, or closed on a run that is down (files reverted, nothing
    started)."""
    entries = engine.journal.entries()
    closed = [i for i in ids if entries.get(i, {}).get("state") == "closed"]
    healed = [i for i in ids if i not in closed]
    if healed or not closed:
        out.print(f"healed: {', '.join(healed) or 'nothing to heal'}")
    if closed:
        out.print(f"closed (the run is down: {entries[closed[0]].get('run_down')}; files reverted, "
                  f"nothing started): {', '.join(closed)}", highlight=False)


@app.command()
def heal(run_id: Optional[str] = typer.Argument(None, callback=_run_id,
                                                help="Run id, or cloud-NAME / deployment-NAME"),
         cloud: Optional[str] = CLOUD_OPT, targets: Optional[Path] = TARGETS_OPT,
         deployment: Optional[Path] = DEPLOYMENT_OPT) -> None:
    """Restore everything a crashed run left: heal every injected fault (from the fault
    journal) and, on a cloud or deployment, delete what the harness wrote there."""
    from harness.faults.engine import FaultEngine
    from harness.writes import clean_up_all

    try:
        target = _target(run_id, cloud, targets, deployment)
        engine = FaultEngine(target)
        healed = engine.heal_all()
        cleaned = clean_up_all(target) if target.foreign else {}
    except HarnessError as exc:
        _fail(exc)
    _print_healed(engine, healed)
    for prefix, removed in cleaned.items():
        out.print(f"deleted what {prefix} wrote: {removed['secrets']} secret(s), {removed['containers']} "
                  f"container(s)" + (f", {removed['failed']} could not be deleted" if removed["failed"] else ""))


shim_app = typer.Typer(help="The PKCS#11 fault shim in a deployment's Barbican containers.", no_args_is_help=True)
app.add_typer(shim_app, name="shim")


def _shim_step(step: str, deployment: Path, dry_run: bool) -> None:
    from harness.deployment import DeploymentTarget, shim

    try:
        target = DeploymentTarget.load(deployment)
        if dry_run:
            out.print(shim.plan(target, step).render(), markup=False, highlight=False)
            return
        done = getattr(shim, step)(target, say=lambda line: out.print(line, markup=False, highlight=False))
    except HarnessError as exc:
        _fail(exc)
    out.print(f"{step}: {len(done)} container(s) changed")


@shim_app.command("install")
def shim_install(deployment: Path = typer.Option(..., "--deployment", help="The deployment file"),
                 dry_run: bool = DRY_RUN_OPT) -> None:
    """Put the fault shim in front of the PKCS#11 module of every Barbican container (one
    at a time: copy it in, point library_path at it, restart); HSM faults need it."""
    _shim_step("install", deployment, dry_run)


@shim_app.command("uninstall")
def shim_uninstall(deployment: Path = typer.Option(..., "--deployment", help="The deployment file"),
                   dry_run: bool = DRY_RUN_OPT) -> None:
    """Undo `shim install`: each barbican.conf back byte-identical, restart, shim removed."""
    _shim_step("uninstall", deployment, dry_run)


scenario_app = typer.Typer(help="Scenario files.", no_args_is_help=True)
app.add_typer(scenario_app, name="scenario")

# `barbican-harness images build [--air-gapped] | list | prune`: the Docker provider's images.
from harness.images import app as images_app  # noqa: E402 - built lazily; needs no daemon to import

app.add_typer(images_app, name="images")


def _scenario_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        files += sorted(p.glob("*.yaml")) if p.is_dir() else [p]
    return files


@scenario_app.command("validate")
def scenario_validate(files: list[Path]) -> None:
    """Check scenario files (schema, faults, parameters, environment) without starting anything."""
    from harness.scenario import load_scenario

    bad = 0
    for f in _scenario_files(files):
        try:
            load_scenario(f)
            out.print(f"[green]ok[/green] {f}")
        except HarnessError as exc:
            bad += 1
            console.print(f"[red]invalid[/red] {exc}", highlight=False)
    raise typer.Exit(2 if bad else 0)


@app.command()
def run(paths: list[Path] = typer.Argument(..., help="Scenario files or directories"),
        provider: Optional[str] = typer.Option(None, "--provider",
                                               help=f"{' or '.join(PROVIDERS)} (default: each topology file's)"),
        run_id: Optional[str] = typer.Option(None, "--run", callback=_run_id,
                                             help="Run on this environment instead of bringing "
                                                                "up each scenario's topology"),
        cloud: Optional[str] = CLOUD_OPT, targets: Optional[Path] = TARGETS_OPT,
        deployment: Optional[Path] = DEPLOYMENT_OPT, allow_destructive: bool = DESTRUCTIVE_OPT,
        max_nodes: int = MAX_NODES_OPT, dry_run: bool = DRY_RUN_OPT, barbican: Optional[str] = BARBICAN_OPT,
        json_out: bool = typer.Option(False, "--json")) -> None:
    """Run scenarios: environment (or the target given), seed, fault timeline with probing,
    heal, verify."""
    from harness.runner import preflight, run_many, run_on_target
    from harness.scenario import load_scenario
    from harness.topology import load_topology

    on_target = bool(run_id or cloud or deployment)
    try:
        if provider is not None:
            check_provider(provider)
        if on_target and (provider or barbican):
            raise HarnessError("--provider and --barbican choose how each scenario's topology comes up; with "
                               "--run, --cloud or --deployment the scenarios run on that target instead")
        scenarios = [load_scenario(f) for f in _scenario_files(paths)]  # all checked before any starts
        if barbican:
            from harness.builds import parse_source

            barbican = parse_source(barbican).spec
        if on_target:
            target = _target(run_id, cloud, targets, deployment, acts="run")
            permission = _permission(allow_destructive, max_nodes)
            preflight(target, scenarios, permission)  # refused here, before anything is written
            if dry_run:
                from harness.plan import scenario_plan

                for s in scenarios:
                    out.print(scenario_plan(target, s).render(), markup=False, highlight=False)
                return
        else:
            if dry_run:
                raise HarnessError("--dry-run plans a run on a target (--run, --cloud or --deployment)")
            # A catalog runs what its provider can; the rest is named, not silently dropped.
            skipped = {}
            for s in scenarios:
                runs_on = provider or load_topology(s.environment_path()).provider
                if runs_on not in s.providers:
                    skipped[s.name] = (f"{s.path}: scenario '{s.name}' runs on {', '.join(s.providers)} only, "
                                       f"not on {runs_on} (use --provider {s.providers[0]})")
            if len(skipped) == len(scenarios):
                raise HarnessError("; ".join(skipped.values()))
            scenarios = [s for s in scenarios if s.name not in skipped]
            for line in skipped.values():
                console.print(f"skipped: {line}", markup=False, highlight=False)
    except HarnessError as exc:
        _fail(exc)
    from harness.progress import RichProgress

    try:
        with RichProgress(console) as progress:
            if on_target:
                results = run_on_target(scenarios, target, progress, permission)
            else:
                results = run_many(scenarios, progress, provider=provider, barbican=barbican)
    except HarnessError as exc:  # an environment that did not come up: one line, no traceback
        _fail(exc)
    if json_out:
        out.print_json(json.dumps([{"name": r.name, "passed": r.passed, "failures": r.failures,
                                    "verdict": r.observed and {k: r.observed[k] for k in
                                                               ("category", "incident", "blast_radius",
                                                                "affected_nodes", "evidence")},
                                    "time_to_verdict_s": r.time_to_verdict_s, "after_heal": r.after_heal,
                                    "ledger": r.ledger, "run_dir": r.run_dir, "rng_seed": r.rng_seed}
                                   for r in results]))
    else:
        table = Table(title="scenarios")
        for col in ("scenario", "result", "verdict", "to verdict (s)", "ledger", "why"):
            table.add_column(col)
        for r in results:
            obs = r.observed or {}
            ledger = r.ledger or {}
            table.add_row(r.name, "[green]PASS[/green]" if r.passed else "[red]FAIL[/red]",
                          f"{obs.get('category', '-')} / {obs.get('blast_radius', '-')}",
                          str(r.time_to_verdict_s), f"{ledger.get('verified', 0)}/{ledger.get('acknowledged', 0)} ok",
                          "; ".join(r.failures)[:200])
        print_table(out, table)
    raise typer.Exit(0 if all(r.passed for r in results) else 1)


@app.command("diff-behaviour")
def diff_behaviour(
        baseline: str = typer.Argument(..., help="Run directory (a scenario run, or a directory of them) or a "
                                                 "Barbican build source (pypi:VERSION, wheel:PATH, git:PATH[@REF] ...)"),
        candidate: str = typer.Argument(..., help="The same kinds as BASELINE"),
        scenarios: Optional[list[Path]] = typer.Option(None, "--scenario", help="Scenario file(s) run on a build "
                                                       "source (default: db-down, kek-mismatch-one-node, "
                                                       "hsm-device-error-persistent)"),
        accept: Optional[Path] = typer.Option(None, "--accept", help="YAML list of accepted differences "
                                              "(scenario, field; optional phase, node, operation, before, after, reason)"),
        provider: Optional[str] = typer.Option(None, "--provider", help="For build sources: local or docker"),
        json_out: bool = typer.Option(False, "--json")) -> None:
    """Behaviour under faults, build against build: scenario by scenario and phase by phase
    (before / during / after the fault), every difference with its meaning. Exit 1 when a
    difference is not in --accept, 0 otherwise."""
    from harness.behaviour import diff as bdiff
    from harness.scenario import load_scenario

    try:
        if provider is not None:
            check_provider(provider)
        accepted = bdiff.load_accept(accept) if accept else []
        files = _scenario_files(scenarios) if scenarios else bdiff.default_scenario_files()
        needs_run = [s for s in (baseline, candidate) if not Path(s).is_dir()]
        if needs_run:
            from harness.builds import parse_source

            for s in needs_run:
                parse_source(s, what="diff-behaviour")  # a bad source is refused before anything runs
            for f in files:
                load_scenario(f)
    except HarnessError as exc:
        _fail(exc)
    from harness.progress import RichProgress

    try:
        with RichProgress(console) as progress:
            report = bdiff.run_and_diff(baseline, candidate, files, accepted, progress, provider)
    except HarnessError as exc:
        _fail(exc)
    if json_out:
        out.print_json(json.dumps(report))
    else:
        for line in bdiff.report_lines(report):
            out.print(line, markup=False, highlight=False)
    raise typer.Exit(1 if report["unaccepted"] else 0)


@app.command()
def diagnose(run_id: Optional[str] = typer.Option(None, "--run", callback=_run_id,
                                                  help="An environment of this harness"),
             cloud: Optional[str] = typer.Option(None, "--cloud", help="An existing cloud (clouds.yaml)"),
             targets: Optional[Path] = typer.Option(None, "--targets", help="Targets file for --cloud"),
             since: str = typer.Option("5m", "--since", help="Log window: lines older than this "
                                                           "(or than the last heal) are not evidence"),
             horizon: str = typer.Option("24h", "--horizon", help="Expiry audit: consumed secrets "
                                                                   "expiring within this count too"),
             json_out: bool = typer.Option(False, "--json")) -> None:
    """Is it an outage or a data-loss incident? Probes any live Barbican; writes only
    canary secrets (in the writer's project) and deletes them."""
    from harness.load_driver.cli import parse_duration
    from harness.triage.diagnose import Diagnoser, Known

    try:
        since_s, horizon_s = parse_duration(since, "--since"), parse_duration(horizon, "--horizon")
        if cloud:
            from harness.targets import CloudTarget

            target, logs, known = CloudTarget.load(cloud, targets), None, Known()
        else:
            from harness.environment import Environment

            target = Environment.attach(run_id)
            target.require_up("diagnose")
            logs = target.run_dir / "logs"
            known = Known.load(target.run_dir / "known.json")
        d = Diagnoser(target, known=known, logs_dir=logs, since=since_s, horizon=horizon_s)
        # With a worker and a queue, an order is probed too (orders_stalled).
        topology = getattr(getattr(target, "ctx", None), "topology", None)
        verdict = d.diagnose(orders=bool(topology and topology.async_orders))
    except HarnessError as exc:
        _fail(exc)
    if json_out:
        out.print_json(json.dumps({k: v for k, v in verdict.to_dict().items() if k != "probes"}))
        return
    out.print(f"[bold]{verdict.category}[/bold]: {verdict.incident}, blast radius {verdict.blast_radius}"
              + (f", nodes {', '.join(verdict.affected_nodes)}" if verdict.affected_nodes else "")
              + (f"; cause: {verdict.root_cause}" if verdict.root_cause else "")
              + (f", also affected: {', '.join(verdict.affected_services)}" if verdict.affected_services else "")
              + f" ({verdict.seconds} s)")
    for line in verdict.evidence:
        out.print(f"  - {line}", markup=False)


@app.command("known-bugs")
def known_bugs(run_id: Optional[str] = RUN_OPT, cloud: Optional[str] = CLOUD_OPT,
               targets: Optional[Path] = TARGETS_OPT, deployment: Optional[Path] = DEPLOYMENT_OPT,
               bug: list[str] = typer.Option([], "--bug", help="Only this bug id (repeatable)"),
               allow_quota_changes: bool = typer.Option(False, "--allow-quota-changes",
                                                        help="Let the quota probe set the writer's project "
                                                             "quota for a few seconds (restored after)"),
               json_out: bool = typer.Option(False, "--json")) -> None:
    """Which known Barbican bugs does this Barbican have? Probes each (API calls only, writes in
    the writer's project, all deleted after) and prints present / absent / not checkable."""
    from rich.markup import escape

    from harness.known_bugs.run import run_known_bugs, select

    try:
        select(bug)  # an unknown id is refused before anything is opened or written
        target = _target(run_id, cloud, targets, deployment, acts="known-bugs")
        report = run_known_bugs(target, cloud or target.run_id, bug, allow_quota_changes,
                                progress=lambda line: console.print(line, highlight=False, markup=False))
    except HarnessError as exc:
        _fail(exc)
    if json_out:
        out.print_json(json.dumps(report))
    else:
        colour = {"present": "red", "absent": "green", "not checkable": "yellow"}
        table = Table(title=f"known Barbican bugs on {report['target']}: Barbican {report['barbican_version']}, "
                            f"API max microversion {report['api_max_microversion'] or '?'}", show_lines=True)
        for col in ("bug", "status", "evidence"):
            table.add_column(col, no_wrap=col == "bug")
        for f in report["findings"]:
            table.add_row(f["id"], f"[{colour[f['status']]}]{f['status']}[/]", escape("\n".join(f["evidence"])))
        out.print(table)
        out.print(", ".join(f"{n} {s}" for s, n in report["summary"].items()) + f" in {report['seconds']} s; "
                  f"results: {Path(report['run_dir']) / 'known-bugs.json'}", highlight=False)
    for line in report["cleanup"]["left"]:
        console.print(f"[red]left behind:[/red] {escape(line)}", highlight=False)
    if report["interrupted"]:
        console.print("interrupted" + ("" if report["cleanup"]["left"] else ": every write undone"))
        raise typer.Exit(130)
    raise typer.Exit(1 if report["cleanup"]["left"] else 0)


@app.command()
def load(run_id: Optional[str] = typer.Option(None, "--run", callback=_run_id,
                                              help="Run id of an environment that is up"),
         env_path: Optional[Path] = typer.Option(None, "--env", help="Topology to bring up for this load (down after)"),
         cloud: Optional[str] = CLOUD_OPT, targets: Optional[Path] = TARGETS_OPT,
         deployment: Optional[Path] = DEPLOYMENT_OPT, allow_destructive: bool = DESTRUCTIVE_OPT,
         max_nodes: int = MAX_NODES_OPT, dry_run: bool = DRY_RUN_OPT,
         scenario: Optional[Path] = typer.Option(None, "--scenario", help="YAML with a top-level timeline: of faults"),
         users: int = typer.Option(..., "--users", min=1),
         spawn_rate: float = typer.Option(..., "--spawn-rate"),
         duration: Optional[str] = typer.Option(None, "--duration", help="60, 90s, 2m (default: the scenario's)"),
         workers: int = typer.Option(0, "--workers", min=0, help="Locust workers (0: one process)"),
         max_error_ratio: list[str] = typer.Option([], "--max-error-ratio", help="(inside:|outside:)(NAME=)RATIO"),
         max_p95_ms: list[str] = typer.Option([], "--max-p95-ms", help="(inside:|outside:)(NAME=)MS"),
         seed: Optional[int] = typer.Option(None, "--seed"),
         weight: list[str] = typer.Option([], "--weight", help="NAME=N: user class mix (octavia, luks, crud, "
                                          "orders, store_get; default 2/4/3/1/0), repeatable"),
         barbican: Optional[str] = BARBICAN_OPT) -> None:
    """Locust load with a fault timeline; thresholds inside/outside fault windows; ledger; report."""
    from harness.load_driver.cli import load_command

    try:
        target = _target(None, cloud, targets, deployment) if (cloud or deployment) else None
        code = load_command(run_id, env_path, scenario, users, spawn_rate, duration, workers,
                            max_error_ratio, max_p95_ms, seed=seed, weight=weight, console=console, out=out,
                            target=target, permission=_permission(allow_destructive, max_nodes), dry_run=dry_run,
                            barbican=barbican)
    except HarnessError as exc:
        _fail(exc)
    raise typer.Exit(code)


@app.command()
def report(run_id: Optional[str] = typer.Argument(None, callback=_run_id,
                                                  help="Run id (default: newest environment up)"),
           latest: bool = typer.Option(False, "--latest", help="Only print the newest report's path")) -> None:
    """Rebuild a run's report.html (+ allure-results/, junit.xml) and print its path."""
    from harness.report.cli import report_command

    try:
        report_command(run_id, latest, out=out)
    except HarnessError as exc:
        _fail(exc)


qualify_app = typer.Typer(help="Qualify a PKCS#11 module for p11_crypto: backend checks, then Barbican on it "
                               "(secret API, HSM calls per operation, throughput, transient HSM errors); writes "
                               "qualification.json/.md. `qualify-hsm matrix`: several modules side by side.",
                          invoke_without_command=True)
app.add_typer(qualify_app, name="qualify-hsm")


@qualify_app.callback()
def qualify_hsm(
    ctx: typer.Context,
    module: Optional[Path] = typer.Option(None, "--module", help="The PKCS#11 library, e.g. "
                                                                 "/usr/lib/softhsm/libsofthsm2.so"),
    token_label: Optional[str] = typer.Option(None, "--token-label", help="Label of the token to qualify"),
    pin_env: Optional[str] = typer.Option(None, "--pin-env", help="Name of the environment variable holding the "
                                                                  "token's user PIN (the PIN is never printed)"),
    options: Optional[Path] = typer.Option(None, "--options", help="p11_crypto_plugin options (barbican.conf, "
                                                                   "ini or YAML); the rest: Barbican's defaults"),
    json_out: bool = typer.Option(False, "--json", help="Print the report as one JSON document"),
) -> None:
    """Qualify the vendor's token (--module, --token-label, --pin-env), or see `matrix`."""
    if ctx.invoked_subcommand is not None:
        return
    missing = [name for name, value in (("--module", module), ("--token-label", token_label),
                                        ("--pin-env", pin_env)) if not value]
    if missing:
        _fail(HarnessError(f"qualify-hsm: {', '.join(missing)} missing (a vendor's token needs --module, "
                           f"--token-label and --pin-env; `qualify-hsm matrix` provisions its own tokens)"))
    from harness.qualify.command import qualify_hsm_command

    raise typer.Exit(qualify_hsm_command(str(module), token_label, pin_env, str(options) if options else None,
                                         json_out))


@qualify_app.command("matrix")
def qualify_hsm_matrix(
    modules: str = typer.Option("", "--modules", help="Comma-separated, from: softhsm, opencryptoki, tpm2, kryoptic, "
                                                      "nss (default: all)"),
    soak: bool = typer.Option(False, "--soak", help="The full profile (10 s per load level, the whole secret API "
                                                    "suite); default: the short CI profile"),
    json_out: bool = typer.Option(False, "--json", help="Print the matrix as one JSON document"),
) -> None:
    """Provision a token on each module, search its p11_crypto_plugin block, qualify it end to end,
    and write one compatibility matrix (matrix.md, matrix.html checked in headless Chromium)."""
    from harness.qualify.matrix import matrix_command

    raise typer.Exit(matrix_command([m.strip() for m in modules.split(",") if m.strip()], soak, json_out))


@app.command("upgrade-gate")
def upgrade_gate(
        from_source: Optional[str] = typer.Option(None, "--from", help="Build the environment starts on: pypi:VERSION "
                                                  "(or VERSION), wheel:PATH, sdist:PATH, git:PATH[@REF]"),
        to_source: Optional[str] = typer.Option(None, "--to", help="Build it is upgraded to (same forms)"),
        path: Optional[str] = typer.Option(None, "--path", help="A,B,C: upgrade hop by hop (instead of --from/--to); "
                                           "the ledger is verified after each hop"),
        env_path: Optional[Path] = typer.Option(None, "--env", help="Topology file (default environments/simple-crypto"
                                                ".yaml; with --rolling simple-crypto-3.yaml)"),
        provider: Optional[str] = typer.Option(None, "--provider", help="local or docker (default: the topology's)"),
        from_config: str = typer.Option("harness", "--from-config",
                                        help="harness (explicit KEK) or default-kek (no kek line on FROM: the 2025.2 trap)"),
        break_mode: str = typer.Option("none", "--break", help="none or kek-change (TO gets another KEK)"),
        rolling: bool = typer.Option(False, "--rolling", help="Rolling upgrade under Locust load, node by node"),
        users: int = typer.Option(10, "--users", min=1, help="--rolling: Locust users"),
        max_error_ratio: list[str] = typer.Option([], "--max-error-ratio", help="--rolling: [PHASE:]RATIO per phase "
                                                  "(from, db, node, to); default 0 in every phase"),
        max_p95_ms: list[str] = typer.Option([], "--max-p95-ms", help="--rolling: [PHASE:]MS per phase"),
        seed: Optional[int] = typer.Option(None, "--seed", help="--rolling: the load's seed"),
        weight: list[str] = typer.Option([], "--weight", help="--rolling: NAME=N user class mix (default octavia=2 "
                                         "luks=4 crud=0 orders=1 store_get=3; crud hits Barbican's metadata deadlock)"),
        no_conformance: bool = typer.Option(False, "--no-conformance", help="Skip conformance/api on TO"),
        behaviour: bool = typer.Option(False, "--behaviour", help="Also diff behaviour under faults, FROM against "
                                       "TO (diff-behaviour's default scenarios); an unaccepted difference fails"),
        behaviour_accept: Optional[Path] = typer.Option(None, "--behaviour-accept",
                                                        help="--behaviour: YAML list of accepted differences"),
        json_out: bool = typer.Option(False, "--json", help="Print the JSON report")) -> None:
    """Upgrade gate between any builds: secrets seeded on FROM must read back byte-identical after
    every hop, new secrets must work, then conformance/api on TO; --rolling also judges each phase
    of a rolling upgrade under load (zero-downtime: yes/no). Exit 0 PASS, 1 FAIL, 2 ERROR (the gate
    could not run); report in the run dir (upgrade-gate.json/.txt, report.html)."""
    from harness.upgrade.command import rolling_plan, upgrade_gate_command, upgrade_path

    try:
        hops = upgrade_path(from_source, to_source, path)
        plan = rolling_plan(users, max_error_ratio, max_p95_ms, seed, weight) if rolling else None
        if not rolling and (max_error_ratio or max_p95_ms or weight):
            raise HarnessError("--max-error-ratio, --max-p95-ms and --weight are options of --rolling")
        code = upgrade_gate_command(hops, env_path, provider=provider, from_config=from_config,
                                    break_mode=break_mode, rolling=plan, conformance=not no_conformance,
                                    json_out=json_out, behaviour=behaviour, behaviour_accept=behaviour_accept)
    except HarnessError as exc:
        _fail(exc)
    raise typer.Exit(code)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
