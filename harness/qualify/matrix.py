"""`barbican-harness qualify-hsm matrix`: qualify several PKCS#11 modules in one run and put
them side by side.

For each module, in a child process of its own (started under the module's isolation, e.g.
opencryptoki's private namespaces), `qualify_module`:
1. provisions a fresh token (harness.qualify.provision); a module that cannot be set up is a
   FAIL with the reason;
2. probes it with Barbican's own code (directly as library_path, and through the fault shim)
   and searches the [p11_crypto_plugin] options (harness.qualify.search);
3. runs the qualification (harness.qualify.command.run_qualification: backend checks, then
   Barbican through the shim: secret API, orders, HSM calls per operation, throughput at
   1/4/16 clients, transient HSM errors) with the block that passed, or, when no block passes
   every check, with the closest one, to measure what the failure does to Barbican. Barbican is
   not started when its own code cannot even load the module and make an MKEK through the shim.
The matrix (matrix.json, matrix.md, matrix.html, the HTML checked in headless Chromium) goes to
reports/runs/<run_id>/. Profiles: `short` (CI) and `full` (--soak).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import redact
from harness.qualify.workers import call_worker, serve

PIN_VAR = "QUALIFY_MATRIX_TOKEN_PIN"


@dataclass(frozen=True)
class Profile:
    name: str
    seconds: float           # per load phase (operation x client count)
    calls_n: int             # operations per HSM-call batch
    api_k: str | None        # -k of the conformance/api run
    threads: int             # concurrency check
    iterations: int
    timeout: float           # one module, everything included
    # Start Barbican with the closest block when no block passes (to measure what the failure
    # does to it); the short profile starts Barbican only with a block that passes.
    run_closest: bool


PROFILES = {
    "short": Profile("short", seconds=1.0, calls_n=5, api_k=None, threads=4, iterations=25, timeout=900,
                     run_closest=False),
    "full": Profile("full", seconds=10.0, calls_n=20, api_k="secret", threads=8, iterations=100, timeout=3600,
                    run_closest=True),
}


def qualify_module(name: str, profile: Profile, out_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """One module, start to end (runs in the module's own process)."""
    from harness.qualify.command import QualifyConfig, run_qualification
    from harness.qualify.provision import PROVISIONERS, ModuleUnavailable
    from harness.qualify.search import search

    prov = PROVISIONERS[name](out_dir / "token", log=log)
    out: dict[str, Any] = {"module": name, "title": prov.title, "packages": list(prov.packages),
                           "facts": prov.facts(), "profile": profile.name}
    t0 = time.monotonic()
    try:
        out["library"] = prov.library()
        log(f"[{name}] provisioning a token ({prov.title})")
        out_dir.mkdir(parents=True, exist_ok=True)
        with prov.provision() as token:
            out["token"] = {"label": token.label, **token.info}
            out["diagnosis"] = prov.diagnose(token)
            log(f"[{name}] option search")
            found = search(token.module, token.label, token.pin, threads=profile.threads,
                           iterations=profile.iterations, log=log)
            out["search"] = found.to_dict()
            block = found.block or found.closest or {}
            via_shim = found.probe.get("barbican", {}).get("through the shim", {})
            if not via_shim.get("ok"):
                out["barbican_not_run"] = (f"Barbican's own code fails on the module through the shim at "
                                           f"{via_shim.get('step')}: {via_shim.get('error')}")
            elif not found.block and not profile.run_closest:
                out["barbican_not_run"] = ("no option block passes every backend check (the full profile, --soak, "
                                           "runs Barbican with the closest one to show the effect)")
            options = out_dir / "p11-options.ini"
            options.write_text("[p11_crypto_plugin]\n" + "".join(f"{k} = {v}\n" for k, v in block.items()))
            os.environ[PIN_VAR] = token.pin
            redact.register(token.pin)
            log(f"[{name}] qualification with the {'passing' if found.block else 'closest' if block else 'default'} "
                f"option block" + (f" (backend checks only: {out['barbican_not_run']})" if "barbican_not_run" in out
                                   else ""))
            cfg = QualifyConfig(module=token.module, token_label=token.label, pin_env=PIN_VAR,
                                options_file=str(options), seconds=profile.seconds, calls_n=profile.calls_n,
                                api_k=profile.api_k, backend_threads=profile.threads,
                                backend_iterations=profile.iterations,
                                barbican_despite_backend_failures="barbican_not_run" not in out, log=log)
            report, _ = run_qualification(cfg)
            out["qualification"] = {k: v for k, v in report.items() if not k.startswith("_")}
    except ModuleUnavailable as exc:
        out["setup_error"] = str(exc)
        log(f"[{name}] cannot be set up here: {exc}")
    out["seconds"] = round(time.monotonic() - t0, 1)
    out["verdict"] = verdict(out)
    return out


def verdict(module: dict[str, Any]) -> str:
    q = module.get("qualification") or {}
    ok = (not module.get("setup_error") and (module.get("search") or {}).get("block") and q.get("passed"))
    return "PASS" if ok else "FAIL"


def new_run_id() -> str:
    return f"qualify-matrix-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def run_matrix(modules: list[str], profile: Profile, log: Callable[[str], None] = lambda s: None,
               run_dir: Path | None = None) -> tuple[dict[str, Any], int]:
    """Every module, one after the other (each in its own process); then the matrix.
    Exit code 0 when every module passes, 1 otherwise."""
    from harness.environment import make_run_dir, runs_dir
    from harness.qualify.matrix_report import write_matrix
    from harness.qualify.provision import PROVISIONERS, ModuleUnavailable

    run_id = run_dir.name if run_dir else new_run_id()
    run_dir = run_dir or runs_dir() / run_id
    make_run_dir(run_dir, exist_ok=True)
    started = time.monotonic()
    results = []
    for name in modules:
        cls = PROVISIONERS[name]
        log(f"== {name}: {cls.title}" + (f" (under {' '.join(cls.isolation[:-1])})" if cls.isolation else ""))
        try:
            cls.prepare_machine(log)     # a first build must not eat the module's time bound
        except ModuleUnavailable:
            pass                         # the module's own run reports it as its set-up error

        def forward(line: str) -> None:
            if not line.startswith("{"):
                log(redact.mask(line))

        done = call_worker("harness.qualify.matrix", "module",
                           {"module": name, "profile": profile.name, "out_dir": str(run_dir / name)},
                           timeout=profile.timeout, argv_prefix=cls.isolation, stream=forward)
        result = done.answer or {"module": name, "title": cls.title, "verdict": "FAIL", "profile": profile.name,
                                 "setup_error": f"the module's qualification process {done.why}"}
        log(f"== {name}: {result['verdict']} ({result.get('seconds', '?')} s)")
        results.append(result)
    matrix = {"tool": "barbican-harness qualify-hsm matrix", "run_id": run_id, "run_dir": str(run_dir),
              "profile": profile.name, "modules": results, "seconds": round(time.monotonic() - started, 1)}
    write_matrix(matrix, run_dir)
    code = 0 if all(m["verdict"] == "PASS" for m in results) and matrix.get("html_check", {}).get("ok") else 1
    return matrix, code


def _module_worker(spec: dict[str, Any]) -> dict[str, Any]:
    def log(line: str) -> None:
        print(redact.mask(line), file=sys.stderr, flush=True)

    return qualify_module(spec["module"], PROFILES[spec["profile"]], Path(spec["out_dir"]), log)


def matrix_command(modules: list[str], soak: bool, json_out: bool) -> int:
    """The CLI body of `barbican-harness qualify-hsm matrix`."""
    from rich.console import Console

    from harness.qualify.provision import PROVISIONERS

    err = Console(stderr=True, soft_wrap=True)
    unknown = [m for m in modules if m not in PROVISIONERS]
    if unknown:
        err.print(f"error: --modules: unknown module(s) {', '.join(unknown)}; allowed: {', '.join(PROVISIONERS)}",
                  markup=False, highlight=False)
        return 2
    profile = PROFILES["full" if soak else "short"]
    matrix, code = run_matrix(modules or list(PROVISIONERS), profile,
                              log=lambda s: err.print(redact.mask(s), markup=False, highlight=False))
    if json_out:
        print(redact.mask(json.dumps(matrix, indent=2, default=str)))
    else:
        print(matrix["markdown"])
    err.print(f"matrix: {matrix['paths']['md']} and {matrix['paths']['html']}", markup=False, highlight=False)
    return code


if __name__ == "__main__":
    sys.exit(serve({"module": _module_worker}, "harness.qualify.matrix"))
