"""`barbican-harness qualify-hsm`: qualify a PKCS#11 module (and token) for Barbican's
p11_crypto plugin, end to end.

    barbican-harness qualify-hsm --module PATH --token-label L --pin-env VAR [--options FILE]

1. Backend qualification (harness.qualify.checks.Qualifier, in a child process) against the
   module and token with the options (Barbican's defaults where the file gives none). Any
   failure stops here, naming the mechanism and the option to change: Barbican is not started
   (`qualify-hsm matrix` may start it anyway, to measure what the failure does to Barbican).
2. A Barbican environment (environments/pkcs11-softhsm.yaml with these hsm settings, written
   to a temporary topology) with p11_crypto on the module, through the PKCS#11 fault shim,
   and Barbican's [p11_crypto_plugin] set to exactly the qualified options.
   Barbican uses the token given (label L, PIN from $VAR, SoftHSM: the caller's
   SOFTHSM2_CONF), with per-run MKEK/HMAC labels destroyed afterwards (`token_mode`
   "given-token" in the report).
3. The secret API: every secret type and content type stored and read back across nodes,
   a key order, delete (python-barbicanclient); then conformance/api -k secret (subprocess).
4. PKCS#11 calls per API operation (shim counters), throughput and p50/p95 of store and get
   at 1, 4 and 16 concurrent clients.
5. One injected CKR_DEVICE_ERROR / CKR_SESSION_COUNT each (shim rules, count=1): Barbican's
   re-initialise-and-retry must absorb it, and log it; then two CKR_DEVICE_ERROR in a row, which
   outlast the one retry: that store fails, and the node must serve again afterwards.
6. The report: reports/runs/<run_id>/qualification.json and .md (printed too). Exit 0 when
   every requirement passes, 1 on any FAIL, 2 on a usage error.

The PIN is read from the environment variable, held in memory, registered with the
redactor, and given to child processes on stdin or through the environment (never argv).
"""

from __future__ import annotations

import configparser
import datetime as dt
import json
import os
import re
import secrets as _rand
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness import redact
from harness.conformance_run import run_conformance
from harness.errors import HarnessError
from harness.qualify.barbican_checks import api_smoke, fault_rows
from harness.qualify.measure import PAYLOAD_BYTES, hsm_call_rows, hsm_calls_per_operation, measure_load
from harness.qualify.module import is_softhsm
from harness.qualify.options import BARBICAN_DEFAULTS, P11Options, load_options
from harness.qualify.report import Row, write_report
from harness.qualify.workers import REPO, call_worker, serve

BASE_TOPOLOGY = REPO / "environments" / "pkcs11-softhsm.yaml"
TOPOLOGY_NAME = "qualify-hsm"

# [p11_crypto_plugin] options the environment sets itself (module, token, PIN, key labels).
ENV_MANAGED = frozenset({"library_path", "token_labels", "token_serial_number", "login", "mkek_label",
                         "hmac_label"})
STAGES = ("backend", "barbican", "api", "hsm", "load", "reinit")


class UsageError(HarnessError):
    """A wrong argument (exit code 2)."""


@dataclass
class QualifyConfig:
    module: str
    token_label: str
    pin_env: str
    options_file: str | None = None
    levels: tuple[int, ...] = (1, 4, 16)
    seconds: float = 10.0            # per operation and level
    calls_n: int = 20                # operations per HSM-call batch
    api_k: str | None = "secret"     # -k of the conformance/api run (None: skip it)
    api_timeout: float = 1800
    backend_threads: int = 8
    backend_iterations: int = 100    # sessions per thread in the concurrency check
    backend_timeout: float = 900
    # Start Barbican even when backend checks failed (qualify-hsm matrix: the run shows what
    # the failure does to Barbican; Barbican loads the module through the shim either way).
    barbican_despite_backend_failures: bool = False
    base_topology: Path = BASE_TOPOLOGY
    log: Callable[[str], None] = field(default=lambda s: print(s, file=sys.stderr, flush=True))


# --------------------------------------------------------------------------------------
# Child processes (harness.qualify.workers): backend qualification and token clean-up
# --------------------------------------------------------------------------------------


def _backend_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from harness.qualify.checks import Qualifier, Target

    opts = load_options(spec.get("options_file"))
    q = Qualifier(Target(spec["module"], token_label=spec["token_label"], pin=spec["pin"]), opts)
    try:
        results = q.run_all(threads=int(spec.get("threads", 8)), iterations=int(spec.get("iterations", 100)))
    finally:
        problems = q.close()
    return {"results": [r.to_dict() for r in results], "close_problems": problems}


def _cleanup_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Destroy the token objects with the given labels (the run's MKEK and HMAC key)."""
    from pkcs11 import Attribute
    from pkcs11.exceptions import PKCS11Error

    from harness.qualify.module import ckr_name, load_library

    lib, _ = load_library(spec["module"], bool(spec.get("os_locking_ok", True)))
    token = lib.get_token(token_label=spec["token_label"])
    destroyed = 0
    try:
        with token.open(rw=True, user_pin=spec["pin"]) as session:
            for label in spec["labels"]:
                for obj in list(session.get_objects({Attribute.LABEL: label})):
                    obj.destroy()
                    destroyed += 1
    except PKCS11Error as exc:
        return {"destroyed": destroyed, "error": ckr_name(exc)}
    return {"destroyed": destroyed, "error": None}


# --------------------------------------------------------------------------------------
# The environment: a temporary topology with the qualified options
# --------------------------------------------------------------------------------------


def barbican_p11_options(opts: P11Options) -> dict[str, str]:
    """Every [p11_crypto_plugin] option with its effective value (given, else Barbican's
    default) except those the environment sets: what the Qualifier qualified, written out
    in full so that no harness default (SOFTHSM_P11_OPTIONS) slips in."""
    out = {}
    for name in BARBICAN_DEFAULTS:
        if name in ENV_MANAGED:
            continue
        value = opts.value(name)
        if value != "":
            out[name] = value
    return out


def build_topology(cfg: QualifyConfig, opts: P11Options, mode: str, labels: dict[str, str]) -> dict[str, Any]:
    topo = yaml.safe_load(cfg.base_topology.read_text())
    topo["name"] = TOPOLOGY_NAME
    topo["description"] = f"qualify-hsm: p11_crypto on {cfg.module} ({mode})"
    hsm: dict[str, Any] = {"token_label": cfg.token_label, "shim": True, "module": cfg.module,
                           "pin_env": cfg.pin_env, "pkek_cache_ttl": opts.pkek_cache_ttl,
                           "p11_options": barbican_p11_options(opts), **labels}
    if is_softhsm(cfg.module) and os.environ.get("SOFTHSM2_CONF"):
        hsm["softhsm_conf"] = os.environ["SOFTHSM2_CONF"]
    topo["hsm"] = hsm
    return topo


def p11_block(env, module: str) -> tuple[dict[str, str], str]:
    """The [p11_crypto_plugin] section barbican-1 ran with: login masked, library_path the
    module itself (the node loaded it through the shim, whose path is returned too)."""
    conf = env.run_dir / "barbican" / env.nodes[0].name / ".barbican" / "barbican.conf"
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(conf)
    block = {}
    if parser.has_section("p11_crypto_plugin"):   # items() would add [DEFAULT]'s keys
        block = {k: v for k, v in parser.items("p11_crypto_plugin", raw=True) if k not in parser.defaults()}
    shim_path = block.get("library_path", "")
    if "login" in block:
        block["login"] = "***"
    block["library_path"] = module
    return block, shim_path


def _run_api_conformance(env, cfg: QualifyConfig) -> tuple[Row, dict[str, Any]]:
    result = run_conformance(env, ["conformance/api"], k=cfg.api_k, out_dir=env.run_dir, name="api-conformance",
                             timeout=cfg.api_timeout)
    detail = f"{result.summary} (log: api-conformance.log)"
    if result.failed_tests:
        failed = result.failed_tests
        detail += "; failed: " + ", ".join(failed[:8]) + (" ..." if len(failed) > 8 else "")
    return Row("api", "api.conformance", result.ok, detail), result.to_dict()


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def _resolve(cfg: QualifyConfig) -> tuple[P11Options, str, list[str]]:
    if not Path(cfg.module).is_file():
        raise UsageError(f"--module: {cfg.module} does not exist (the path of the vendor's PKCS#11 library, "
                         f"e.g. /usr/lib/softhsm/libsofthsm2.so)")
    pin = os.environ.get(cfg.pin_env)
    if not pin:
        raise UsageError(f"--pin-env: the environment variable {cfg.pin_env} is not set (or empty); "
                         f"export the token's user PIN in it")
    redact.register(pin)
    if cfg.options_file and not Path(cfg.options_file).is_file():
        raise UsageError(f"--options: {cfg.options_file} does not exist")
    try:
        opts = load_options(cfg.options_file)
    except ValueError as exc:
        raise UsageError(f"--options: {exc}") from None
    notes = []
    for name, given, used in (("library_path", opts.library_path, cfg.module),
                              ("token_labels", ",".join(opts.token_labels), cfg.token_label)):
        if given and given != used:
            notes.append(f"{name} = {given} in the options file is replaced by {used} (from the command line)")
    if opts.token_serial_number:
        notes.append("token_serial_number in the options file is not used: the token is chosen by --token-label "
                     "(Barbican would prefer the serial number when both are set)")
    if opts.login:
        notes.append("login in the options file is not used: the PIN comes from --pin-env")
    return opts, pin, notes


_HSM_ERROR = re.compile(r"HSM returned response code: (0x[0-9a-f]+ (CKR_[A-Z_]+))")


def hsm_errors_logged(run_dir: Path) -> dict[str, str]:
    """`node: 0x.. CKR_..` -> CKR name, for each HSM error Barbican logged (its p11 plugin's
    message), from the nodes' application logs of the run."""
    found: dict[str, str] = {}
    for log in sorted((run_dir / "logs").glob("*-app.log")):
        for m in _HSM_ERROR.finditer(log.read_text(errors="replace")):
            found.setdefault(f"{log.name.removesuffix('-app.log')}: {m.group(1)}", m.group(2))
    return found


def new_run_id() -> str:
    return f"{TOPOLOGY_NAME}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{_rand.token_hex(2)}"


def run_qualification(cfg: QualifyConfig, progress=None) -> tuple[dict[str, Any], int]:
    """The whole qualification; returns (report, exit code). Raises UsageError on bad arguments."""
    from harness.environment import runs_dir

    opts, pin, notes = _resolve(cfg)
    log = cfg.log
    run_id = new_run_id()
    run_dir = runs_dir() / run_id
    started = time.monotonic()
    timings: dict[str, float] = {}
    rows: list[Row] = []
    report: dict[str, Any] = {
        "tool": "barbican-harness qualify-hsm", "run_id": run_id, "run_dir": str(run_dir),
        "target": {"module": cfg.module, "token_label": cfg.token_label, "pin_env": cfg.pin_env,
                   "options_source": opts.source if cfg.options_file else "none given",
                   "options_given": opts.to_mapping()},
        "effective_options": barbican_p11_options(opts), "notes": notes, "not_run": [],
    }

    def finish(code_if_ok: int = 0) -> tuple[dict[str, Any], int]:
        report["requirements"] = [r.to_dict() for r in rows]
        report["passed"] = bool(rows) and all(r.passed for r in rows) and not report["not_run"]
        report["result"] = "PASS" if report["passed"] else "FAIL"
        timings["total"] = round(time.monotonic() - started, 1)
        report["timings_s"] = timings
        json_path, md_path, md = write_report(report, run_dir)
        report["_markdown"] = md
        report["_paths"] = [str(json_path), str(md_path)]
        return report, (code_if_ok if report["passed"] else 1)

    # 1. backend qualification ----------------------------------------------------------
    log(f"[1/6] backend qualification of {cfg.module}, token {cfg.token_label!r} "
        f"(options: {report['target']['options_source']})")
    t0 = time.monotonic()
    done = call_worker("harness.qualify.command", "backend-worker",
                       {"module": cfg.module, "token_label": cfg.token_label, "pin": pin,
                        "options_file": cfg.options_file, "threads": cfg.backend_threads,
                        "iterations": cfg.backend_iterations},
                       timeout=cfg.backend_timeout, secret=pin)
    answer, why = done.answer, done.why
    timings["backend"] = round(time.monotonic() - t0, 1)
    if answer is None:
        rows.append(Row("backend", "backend.run", False, f"the backend qualification {why}",
                        option="library_path", value=cfg.module))
    else:
        for r in answer["results"]:
            rows.append(Row("backend", r["requirement"], r["passed"], r["detail"], option=r.get("option"),
                            value=r.get("value"), hint=r.get("hint"), mechanism=r.get("mechanism"),
                            error=r.get("error")))
        if answer.get("close_problems"):
            notes.append("backend clean-up: " + "; ".join(answer["close_problems"]))
    failed = [r for r in rows if not r.passed]
    log(f"      {len(rows) - len(failed)} passed, {len(failed)} failed")
    for r in failed:
        head = f"{r.option} = {r.value}: " if r.option else ""
        log(f"      FAIL [{r.requirement}] {head}{r.detail}" + (f"; {r.hint}" if r.hint else ""))
    if failed and not (cfg.barbican_despite_backend_failures and answer is not None):
        report["not_run"] = list(STAGES[1:])
        notes.append("Barbican was not started: the backend qualification failed (fix the options named above)")
        return finish()
    if failed:
        notes.append("Barbican was started although backend checks failed, to measure what the failures do to it "
                     "(it loads the module through the harness's shim)")

    # 2. Barbican on the module -----------------------------------------------------------
    mode = "given-token"
    description = (f"the given token (label {cfg.token_label!r}, PIN from ${cfg.pin_env}"
                   + (f", SOFTHSM2_CONF={os.environ['SOFTHSM2_CONF']}" if is_softhsm(cfg.module)
                      and os.environ.get("SOFTHSM2_CONF") else "") + "), with per-run MKEK/HMAC labels")
    tag = _rand.token_hex(3)
    labels = {"mkek_label": f"qualify-{tag}-mkek", "hmac_label": f"qualify-{tag}-hmac"}
    topo = build_topology(cfg, opts, mode, labels)
    report["barbican"] = {"token_mode": mode, "token_mode_description": description, "topology": topo}
    log(f"[2/6] Barbican with p11_crypto on {cfg.module} through the fault shim ({description})")

    from harness.environment import Environment
    from harness.progress import Progress

    tmp = Path(tempfile.mkdtemp(prefix="qualify-hsm-"))
    env = None
    try:
        topo_path = tmp / "qualify-hsm.yaml"
        topo_path.write_text(yaml.safe_dump(topo, sort_keys=False))
        t0 = time.monotonic()
        try:
            env = Environment.up(topo_path, progress=progress or Progress(), run_id=run_id)
        except HarnessError as exc:
            errors = hsm_errors_logged(run_dir)
            seen = "; HSM errors in the nodes' logs: " + ", ".join(errors) if errors else ""
            rows.append(Row("barbican", "barbican.up", False,
                            f"the environment did not come up: {redact.mask(str(exc)).splitlines()[0]}{seen}",
                            error=next(iter(errors.values()), None) if errors else None))
            report["not_run"] = list(STAGES[2:])
            return finish()
        finally:
            timings["barbican_up"] = round(time.monotonic() - t0, 1)
        shutil.copy(topo_path, env.run_dir / "qualify-topology.yaml")
        block, shim_path = p11_block(env, cfg.module)
        report["barbican"].update(p11_crypto_plugin=block, shim_library=shim_path,
                                  nodes=[n.name for n in env.nodes])
        rows.append(Row("barbican", "barbican.up", True,
                        f"{len(env.nodes)} API nodes with p11_crypto came up (MKEK and HMAC key made with "
                        f"barbican-manage hsm gen_mkek/gen_hmac); a secret stored through each node reads back "
                        f"through another"))

        def stage(name: str, fn: Callable[[], None]) -> None:
            t = time.monotonic()
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - one broken stage must not hide the others
                rows.append(Row(name, f"{name}.run", False, f"the stage failed: {type(exc).__name__}: "
                                                            f"{redact.mask(str(exc))[:400]}"))
            timings[name] = round(time.monotonic() - t, 1)

        # 3. the secret API
        def api() -> None:
            log("[3/6] secret API: every secret type and content type, key order, delete")
            rows.extend(api_smoke(env, log))
            if cfg.api_k:
                if (REPO / "conformance" / "api").is_dir():
                    log(f"      conformance/api -k '{cfg.api_k}' (subprocess)")
                    row, info = _run_api_conformance(env, cfg)
                    rows.append(row)
                    report["api_conformance"] = info
                    log(f"      {info['summary']}")
                else:
                    notes.append("conformance/api is not in this checkout: only the smoke set ran")

        # 4. HSM calls per operation, throughput
        def hsm() -> None:
            log(f"[4/6] PKCS#11 calls per API operation ({cfg.calls_n} sequential operations per batch)")
            calls = hsm_calls_per_operation(env, n=cfg.calls_n)
            report["hsm_calls_per_operation"] = calls
            rows.extend(hsm_call_rows(calls))

        def load() -> None:
            log(f"[5/6] throughput: {cfg.seconds:g} s of stores then gets at {', '.join(map(str, cfg.levels))} "
                f"clients")
            load_before = os.getloadavg()[0]
            results = measure_load(env, cfg.levels, cfg.seconds, log)
            report["throughput_method"] = {"seconds": cfg.seconds, "levels": list(cfg.levels),
                                           "nodes": len(env.nodes), "payload_bytes": PAYLOAD_BYTES,
                                           "threads_per_node": env.ctx.topology.barbican.threads,
                                           "processes_per_node": env.ctx.topology.barbican.processes,
                                           "cpus": os.cpu_count(),
                                           "loadavg_1m_before": round(load_before, 2)}
            report["throughput"] = [r.to_dict() for r in results]
            errors = sum(r.errors for r in results)
            kinds: dict[str, int] = {}
            for r in results:
                for k, n in r.error_kinds.items():
                    kinds[k] = kinds.get(k, 0) + n
            done = sum(r.ok for r in results)
            rows.append(Row("load", "load.no_errors", errors == 0 and done > 0,
                            f"{done} requests succeeded, {errors} failed" + (f" ({kinds})" if kinds else "")
                            + f" at up to {max(cfg.levels)} concurrent clients"))

        # 5. transient HSM errors
        def reinit() -> None:
            log("[6/6] transient CKR_DEVICE_ERROR / CKR_SESSION_COUNT (shim, count=1): re-initialise and retry; "
                "a burst that outlasts the retry, then recovery")
            for row in fault_rows(env):
                rows.append(row)
                log(f"      {'PASS' if row.passed else 'FAIL'} {row.requirement}")

        stage("api", api)
        stage("hsm", hsm)
        stage("load", load)
        stage("reinit", reinit)
    finally:
        if env is not None:
            busy = env.down()
            left = [p["name"] for p in env.processes() if p["running"]]
            report.setdefault("barbican", {})["environment_down"] = not left and not busy
            if left or busy:
                rows.append(Row("barbican", "barbican.down", False,
                                f"still running after down: {left}; busy ports: {busy}"))
            done = call_worker("harness.qualify.command", "cleanup-worker", {
                "module": cfg.module, "token_label": cfg.token_label, "pin": pin,
                "labels": list(labels.values()), "os_locking_ok": opts.os_locking_ok}, timeout=120, secret=pin)
            answer, why = done.answer, done.why
            if answer is None or answer.get("error"):
                notes.append(f"could not destroy this run's keys {sorted(labels.values())} on the token: "
                             f"{why or answer.get('error')}; destroy them by hand")
            else:
                notes.append(f"destroyed this run's {answer['destroyed']} key objects "
                             f"({', '.join(labels.values())}) on the token")
        shutil.rmtree(tmp, ignore_errors=True)
    return finish()


def qualify_hsm_command(module: str, token_label: str, pin_env: str, options_file: str | None,
                        json_out: bool) -> int:
    """The CLI body of `barbican-harness qualify-hsm`; returns the exit code."""
    from rich.console import Console

    from harness.progress import RichProgress

    err = Console(stderr=True, soft_wrap=True)
    cfg = QualifyConfig(module=module, token_label=token_label, pin_env=pin_env,
                        options_file=str(options_file) if options_file else None,
                        log=lambda s: err.print(redact.mask(s), markup=False, highlight=False))
    try:
        with RichProgress(err) as progress:
            report, code = run_qualification(cfg, progress=progress)
    except HarnessError as exc:
        err.print(f"error: {redact.mask(str(exc))}", markup=False, highlight=False)
        return 2
    if json_out:
        print(redact.mask(json.dumps({k: v for k, v in report.items() if not k.startswith("_")}, indent=2,
                                     default=str)))
    else:
        print(report["_markdown"])
    err.print(f"report: {' and '.join(report['_paths'])}", markup=False, highlight=False)
    return code


if __name__ == "__main__":
    sys.exit(serve({"backend-worker": _backend_worker, "cleanup-worker": _cleanup_worker},
                   "harness.qualify.command"))
