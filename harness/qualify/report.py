"""The `qualify-hsm` report: qualification.json (everything) and qualification.md (what a
person reads; also printed). Every text goes through harness.redact.mask before it is
written or printed, and the [p11_crypto_plugin] block shows `login = ***`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness import redact


@dataclass
class Row:
    """One requirement's outcome (the backend stage reuses checks.CheckResult's fields)."""

    stage: str
    requirement: str
    passed: bool
    detail: str
    option: str | None = None
    value: str | None = None
    hint: str | None = None
    mechanism: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)



def _cell(text: Any) -> str:
    return str(text if text is not None else "").replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    verdict = "PASS" if report["passed"] else "FAIL"
    t = report["target"]
    lines = [f"# HSM qualification for Barbican's p11_crypto plugin: {verdict}", ""]
    lines += [f"- module: `{t['module']}`",
              f"- token: label `{t['token_label']}` (user PIN from ${t['pin_env']}, not shown)",
              f"- options: {t['options_source']}; options not given take Barbican's defaults",
              f"- run: `{report['run_id']}` in `{report['run_dir']}`"]
    b = report.get("barbican") or {}
    if b.get("token_mode"):
        lines.append(f"- Barbican ran on: {b['token_mode_description']}")
    for note in report.get("notes", []):
        lines.append(f"- note: {note}")
    lines.append("")

    failed = [r for r in report["requirements"] if not r["passed"]]
    lines += ["## Requirements", "",
              f"{len(report['requirements']) - len(failed)} passed, {len(failed)} failed"
              + (f"; not run: {', '.join(report['not_run'])}" if report.get("not_run") else ""), ""]
    if failed:
        lines += ["### Failures", ""]
        for r in failed:
            head = f"{r['option']} = {r['value']}: " if r.get("option") and r.get("value") is not None else \
                (f"{r['option']}: " if r.get("option") else "")
            mech = f" [{r['mechanism']}]" if r.get("mechanism") else ""
            fix = f" Fix: {r['hint']}" if r.get("hint") else ""
            lines.append(f"- **FAIL [{r['requirement']}]**{mech} {head}{r['detail']}.{fix}")
        lines.append("")
    lines += ["| result | stage | requirement | detail |", "|---|---|---|---|"]
    for r in report["requirements"]:
        lines.append(f"| {'PASS' if r['passed'] else '**FAIL**'} | {r['stage']} | {_cell(r['requirement'])} | "
                     f"{_cell(r['detail'])} |")
    lines.append("")

    load = report.get("throughput") or []
    if load:
        meta = report.get("throughput_method", {})
        method = (f"{meta.get('seconds', '?')} s per operation and level; clients are threads with their own "
                  f"Keystone session, spread over {meta.get('nodes', '?')} API node(s). store = POST /v1/secrets "
                  f"({meta.get('payload_bytes', '?')}-byte opaque secret), get = GET /v1/secrets/{{id}}/payload. "
                  f"Everything (clients, Keystone, {meta.get('nodes', '?')} x {meta.get('processes_per_node', '?')} "
                  f"uWSGI process(es) x {meta.get('threads_per_node', '?')} threads, MariaDB, the module) shares "
                  f"this machine's {meta.get('cpus', '?')} CPUs (1-min load average before: "
                  f"{meta.get('loadavg_1m_before', '?')}): compare modules on the same machine only.")
        lines += ["## Throughput", "", method, "",
                  "| operation | clients | ok | errors | ops/s | p50 ms | p95 ms | max ms |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for x in load:
            lines.append(f"| {x['op']} | {x['clients']} | {x['ok']} | {x['errors']} | {x['ops_per_s']} | "
                         f"{x['p50_ms']} | {x['p95_ms']} | {x['max_ms']} |")
        lines.append("")

    calls = report.get("hsm_calls_per_operation") or {}
    if calls:
        method = ("Counted by the fault shim over sequential batches through one node (counters reset "
                  "before each batch). `store` reuses the project's cached KEK; "
                  "`store_first_in_project` is the first secret of a new project (a project KEK is made).")
        lines += ["## HSM (PKCS#11) calls per API operation", "", method, "",
                  "| operation | n | calls per op | per function |", "|---|---:|---:|---|"]
        for op, c in calls.items():
            per = ", ".join(f"{fn} {v:g}" for fn, v in c["calls"].items()) or "none"
            lines.append(f"| {op} | {c['n']} | {c['total']:g} | {per} |")
        lines.append("")

    block = b.get("p11_crypto_plugin")
    if block:
        how = ("In the harness Barbican loaded the module through the PKCS#11 fault shim "
               f"(`{b.get('shim_library', '')}`), which forwards every call to it; "
               "`library_path` below is the module itself.")
        lines += ["## The [p11_crypto_plugin] block that worked", "", how, "", "```ini", "[p11_crypto_plugin]"]
        lines += [f"{k} = {v}" for k, v in block.items()]
        lines += ["```", ""]
    api = report.get("api_conformance")
    if api:
        lines += ["## conformance/api", "", f"`{api['command']}`: {api['summary']}", ""]
    return redact.mask("\n".join(lines))


def write_report(report: dict[str, Any], run_dir: Path) -> tuple[Path, Path, str]:
    from harness.environment import make_run_dir

    make_run_dir(run_dir, exist_ok=True)
    md = render_markdown(report)
    text = redact.mask(json.dumps(report, indent=2, default=str))
    json_path, md_path = run_dir / "qualification.json", run_dir / "qualification.md"
    for path, body in ((json_path, text + "\n"), (md_path, md)):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(body)
        os.replace(tmp, path)
    return json_path, md_path, md
