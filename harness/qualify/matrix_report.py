"""The compatibility matrix of `qualify-hsm matrix`: matrix.json (everything), matrix.md and
matrix.html (the same sections, rendered twice from one model), and a check that the HTML
renders: headless Chromium loads it and the DOM it dumps must hold one matrix column per
module and every verdict cell that was written. Texts go through harness.redact.mask."""

from __future__ import annotations

import html
import json
import re
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import redact
from harness.procs import CommandError, run
from harness.qualify.options import conf_text

BROWSERS = ("chromium", "chromium-browser", "google-chrome")

# Requirement rows of the matrix, in Barbican's order; api.secret.* rows are folded into one.
SETUP_ROWS = (("setup.token", "token provisioned"),
              ("barbican.loads_direct", "Barbican's code loads it as library_path (C_Initialize, login, gen_mkek)"),
              ("barbican.loads_shim", "... through a forwarding module (the harness's shim)"),
              ("search.block", "an option block passes every backend check"))
LOAD_LEVELS = (1, 4, 16)


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    # cells shown as verdicts (PASS/FAIL/-): a css class and a data attribute in HTML
    verdict_columns: tuple[int, ...] = ()


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    table: Table | None = None
    code: str | None = None
    level: int = 2


def _rows_of(module: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """requirement -> (PASS/FAIL/-, detail) for one module."""
    out: dict[str, tuple[str, str]] = {}
    search = module.get("search") or {}
    probe = search.get("probe") or {}
    out["setup.token"] = ("FAIL", module["setup_error"]) if module.get("setup_error") else \
        ("PASS", f"{(module.get('token') or {}).get('label', '')} in {(module.get('token') or {}).get('init_seconds', '?')} s")
    for key, how in (("barbican.loads_direct", "direct"), ("barbican.loads_shim", "through the shim")):
        b = (probe.get("barbican") or {}).get(how)
        if b:
            out[key] = ("PASS", "ok") if b.get("ok") else ("FAIL", f"{b.get('step')}: {b.get('error')}")
    if search:
        out["search.block"] = ("PASS", f"{search.get('tried', 0)} combinations tried, {search.get('pruned', 0)} pruned") \
            if search.get("block") else ("FAIL", "; ".join(search.get("unmet") or []) or "no block")
    folded: dict[str, list[dict[str, Any]]] = {}
    for r in (module.get("qualification") or {}).get("requirements", []):
        fold = _fold(r["requirement"])
        if fold:
            if fold not in out:
                out[fold] = ("", "")       # keep the row where its first member was
            folded.setdefault(fold, []).append(r)
            continue
        out[r["requirement"]] = ("PASS" if r["passed"] else "FAIL", r["detail"])
    for fold, members in folded.items():
        failed = [m for m in members if not m["passed"]]
        detail = f"{len(members) - len(failed)}/{len(members)} passed" + (
            "; " + "; ".join(f"{m['requirement']}: {m['detail']}" for m in failed[:3]) if failed else "")
        out[fold] = ("FAIL" if failed else "PASS", detail)
    return out


def _fold(requirement: str) -> str | None:
    """The matrix row a per-mechanism or per-secret-type requirement is folded into."""
    for prefix, row in (("mechanism.listed[", "mechanism.listed"), ("mechanism.info[", "mechanism.info")):
        if requirement.startswith(prefix):
            return row
    if requirement.startswith("api.secret.") and requirement != "api.secret.delete":
        return "api.secrets"
    return None


def _requirement_order(per_module: list[dict[str, tuple[str, str]]]) -> list[str]:
    order = [k for k, _ in SETUP_ROWS]
    for rows in per_module:
        for k in rows:
            if k not in order:
                order.append(k)
    return order


def _block_text(module: dict[str, Any]) -> tuple[str, str | None]:
    search = module.get("search") or {}
    block = search.get("block")
    used = ((module.get("qualification") or {}).get("barbican") or {}).get("p11_crypto_plugin")
    if block:
        head = "passes every backend check" + ("; Barbican ran with it (below: the block it ran with)" if used else "")
    elif search.get("closest"):
        head = ("no block passes every check (" + "; ".join(search.get("unmet") or []) + "); the closest"
                + (", which Barbican ran with to measure the effect" if used else ""))
        block = search["closest"]
    else:
        return ("no block: " + ("; ".join(search.get("unmet") or []) or module.get("setup_error") or "not searched"),
                None)
    shown = used or block
    return head, "[p11_crypto_plugin]\n" + "\n".join(f"{k} = {v}" for k, v in shown.items())


def build_sections(matrix: dict[str, Any]) -> list[Section]:
    modules = matrix["modules"]
    names = [m["module"] for m in modules]
    per_module = [_rows_of(m) for m in modules]
    sections = [Section("PKCS#11 module compatibility matrix for Barbican's p11_crypto plugin", [
        f"Run `{matrix['run_id']}`, profile `{matrix['profile']}` "
        f"({'short: CI' if matrix['profile'] == 'short' else 'full: --soak'}), {matrix['seconds']} s, "
        f"on a machine with {os.cpu_count()} CPUs. Each module got a fresh token; Barbican loaded it through the "
        "harness's PKCS#11 fault shim."], level=1)]
    summary = [[m["module"], m.get("title", ""), m["verdict"], f"{m.get('seconds', '?')} s",
                _headline(m, rows)] for m, rows in zip(modules, per_module)]
    sections.append(Section("Verdicts", table=Table(["module", "as qualified", "verdict", "time", "first failure"],
                                                    summary, verdict_columns=(2,))))
    order = _requirement_order(per_module)
    labels = dict(SETUP_ROWS)
    rows = [[labels.get(req, req)] + [per.get(req, ("-", "not run"))[0] for per in per_module] for req in order]
    sections.append(Section("Requirements", ["PASS/FAIL per requirement and module; `-`: not run (an earlier stage "
                                             "failed). The details are in matrix.json and each module's "
                                             "qualification.md."],
                            Table(["requirement"] + names, rows, verdict_columns=tuple(range(1, len(names) + 1)))))
    # throughput side by side
    load_rows = []
    for op in ("store", "get"):
        for n in LOAD_LEVELS:
            cells = []
            for m in modules:
                hit = next((x for x in (m.get("qualification") or {}).get("throughput") or []
                            if x["op"] == op and x["clients"] == n), None)
                cells.append(f"{hit['ops_per_s']} ops/s, p95 {hit['p95_ms']} ms" + (f", {hit['errors']} errors"
                                                                                      if hit["errors"] else "")
                             if hit else "-")
            load_rows.append([f"{op} x{n}"] + cells)
    sections.append(Section("Throughput and p95 latency", [
        "Barbican API (2 nodes) on each module through the shim; store = POST /v1/secrets, get = GET "
        ".../payload; clients are threads. Same machine for every module: compare within this table only."],
        Table(["operation x clients"] + names, load_rows)))
    call_rows = []
    for op in ("store", "get", "delete", "store_first_in_project"):
        cells = []
        for m in modules:
            c = ((m.get("qualification") or {}).get("hsm_calls_per_operation") or {}).get(op)
            cells.append(f"{c['total']:g} ({', '.join(f'{fn} {v:g}' for fn, v in c['calls'].items()) or 'none'})"
                         if c else "-")
        call_rows.append([op] + cells)
    sections.append(Section("PKCS#11 calls per API operation", ["Counted by the shim."],
                            Table(["operation"] + names, call_rows)))
    for m in modules:
        sections += _module_sections(m)
    return sections


def _headline(module: dict[str, Any], rows: dict[str, tuple[str, str]]) -> str:
    if module.get("setup_error"):
        return module["setup_error"]
    for req, (state, detail) in rows.items():
        if state == "FAIL":
            return f"{req}: {detail}"
    return ""


def _module_sections(m: dict[str, Any]) -> list[Section]:
    out = [Section(f"{m['module']}: {m.get('title', '')} ({m['verdict']})", level=2)]
    facts = [f"library: `{m.get('library', '?')}`"] + [f"set-up: {f}" for f in m.get("facts", [])]
    if m.get("setup_error"):
        facts.append(f"**cannot be set up here**: {m['setup_error']}")
    token = m.get("token") or {}
    if token:
        facts.append(f"token: {token.get('label')} ({token.get('manufacturer', '')} {token.get('model', '')}, "
                     f"firmware {token.get('firmware', '?')}), made in {token.get('init_seconds', '?')} s")
    facts += [f"measured: {d}" for d in m.get("diagnosis", [])]
    probe = (m.get("search") or {}).get("probe") or {}
    for how, b in (probe.get("barbican") or {}).items():
        facts.append(f"Barbican's own PKCS11 class, {how}: " + ("loads it and makes an MKEK" if b.get("ok") else
                                                                f"fails at {b.get('step')}: {b.get('error')}"))
    if m.get("barbican_not_run"):
        facts.append(f"Barbican end to end: not started: {m['barbican_not_run']}")
    out.append(Section("Facts", facts, level=3))
    head, block = _block_text(m)
    out.append(Section("The [p11_crypto_plugin] block", [head], code=block, level=3))
    search = m.get("search") or {}
    attempts = [a for a in search.get("attempts", []) if a["result"] in ("PASS", "FAIL")]
    pruned = [a for a in search.get("attempts", []) if a["result"] == "PRUNED"]
    if attempts or pruned:
        rows = [[a["group"], ", ".join(f"{k}={conf_text(v)}" for k, v in a["options"].items()), a["result"],
                 a.get("error") or "", a.get("requirement") or "", (a.get("why") or "")[:220]] for a in attempts]
        text = [f"{len(attempts)} combinations tried in {search.get('seconds', '?')} s (every group stops at its "
                f"first pass); {len(pruned)} pruned without a call: "
                + "; ".join(sorted({a['why'] for a in pruned if a.get('why')})[:6])]
        out.append(Section("Option search", text, Table(["group", "combination", "result", "CKR / kind",
                                                         "failed requirement", "why"], rows, (2,)), level=3))
    return out


# --------------------------------------------------------------------------------------
# Markdown and HTML from the sections
# --------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(sections: list[Section]) -> str:
    lines: list[str] = []
    for s in sections:
        lines += ["#" * s.level + " " + s.title, ""]
        if len(s.text) > 1 or (s.text and s.level == 3 and s.title == "Facts"):
            lines += [f"- {t}" for t in s.text] + [""]
        else:
            lines += s.text + ([""] if s.text else [])
        if s.table:
            lines.append("| " + " | ".join(_md_cell(h) for h in s.table.header) + " |")
            lines.append("|" + "---|" * len(s.table.header))
            for row in s.table.rows:
                lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
            lines.append("")
        if s.code:
            lines += ["```ini", s.code, "```", ""]
    return redact.mask("\n".join(lines))


_CSS = """body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{border:1px solid #bbb;padding:3px 7px;vertical-align:top;font-size:13px}th{background:#eee}
td.PASS{background:#c8f0c8}td.FAIL{background:#f6c0c0;font-weight:bold}td.not-run{color:#888}
pre{background:#f4f4f4;padding:8px}"""


def render_html(sections: list[Section], title: str) -> str:
    def e(text: str) -> str:      # `code` in the texts becomes <code>
        return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))

    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style>"
           "</head><body>"]
    for s in sections:
        out.append(f"<h{s.level}>{e(s.title)}</h{s.level}>")
        if len(s.text) > 1 or s.title == "Facts":
            out.append("<ul>" + "".join(f"<li>{e(t)}</li>" for t in s.text) + "</ul>")
        else:
            out += [f"<p>{e(t)}</p>" for t in s.text]
        if s.table:
            matrix_id = " id='requirements'" if s.title == "Requirements" else ""
            out.append(f"<table{matrix_id}><tr>" + "".join(f"<th>{e(h)}</th>" for h in s.table.header) + "</tr>")
            for row in s.table.rows:
                cells = []
                for i, c in enumerate(row):
                    if i in s.table.verdict_columns:
                        cls = c if c in ("PASS", "FAIL") else "not-run"
                        cells.append(f"<td class='{cls}' data-verdict='{e(c)}'>{e(c)}</td>")
                    else:
                        cells.append(f"<td>{e(str(c))}</td>")
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</table>")
        if s.code:
            out.append(f"<pre>{e(s.code)}</pre>")
    out.append("</body></html>")
    return redact.mask("\n".join(out))


def browser() -> str | None:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def check_in_browser(path: Path, expect_verdicts: int, expect_columns: int) -> dict[str, Any]:
    """Headless Chromium loads the page; its DOM must hold the requirements table with one
    column per module and every verdict cell written."""
    exe = browser()
    if exe is None:
        return {"ok": False, "detail": "no Chromium to check the HTML with (apt-get install -y chromium)"}
    profile = Path(tempfile.mkdtemp(prefix="matrix-chromium-"))
    try:
        done = run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    f"--user-data-dir={profile}", "--dump-dom", path.resolve().as_uri()], timeout=120,
                   what="chromium --dump-dom matrix.html", check=False)
        run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             f"--user-data-dir={profile}", "--window-size=1400,2400", f"--screenshot={path.with_suffix('.png')}",
             path.resolve().as_uri()], timeout=120, what="chromium --screenshot matrix.html", check=False)
    except CommandError as exc:
        return {"ok": False, "detail": f"Chromium did not render the page: {exc}"}
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    dom = done.stdout
    start = dom.find("id=\"requirements\"")
    end = dom.find("</table>", start)
    table = dom[start:end] if start >= 0 else ""
    header = table.split("</tr>", 1)[0]
    columns = header.count("<th>") - 1
    verdicts = dom.count("data-verdict=")
    ok = start >= 0 and columns == expect_columns and verdicts == expect_verdicts
    return {"ok": ok, "browser": exe, "screenshot": str(path.with_suffix(".png")),
            "detail": f"Chromium's DOM: requirements table {'found' if start >= 0 else 'MISSING'}, {columns} module "
                      f"columns (expected {expect_columns}), {verdicts} verdict cells (expected {expect_verdicts})"}


def write_matrix(matrix: dict[str, Any], run_dir: Path) -> None:
    """matrix.md, matrix.html (checked in Chromium), matrix.json; sets matrix['markdown'],
    matrix['paths'] and matrix['html_check']."""
    sections = build_sections(matrix)
    md = render_markdown(sections)
    page = render_html(sections, f"Barbican PKCS#11 matrix {matrix['run_id']}")
    paths = {"md": run_dir / "matrix.md", "html": run_dir / "matrix.html", "json": run_dir / "matrix.json"}
    paths["md"].write_text(md)
    paths["html"].write_text(page)
    verdict_cells = sum(len(s.table.rows) * len(s.table.verdict_columns) for s in sections if s.table)
    matrix["html_check"] = check_in_browser(paths["html"], verdict_cells, len(matrix["modules"]))
    matrix["paths"] = {k: str(v) for k, v in paths.items()}
    matrix["markdown"] = md
    body = {k: v for k, v in matrix.items() if k != "markdown"}
    paths["json"].write_text(redact.mask(json.dumps(body, indent=2, default=str)) + "\n")
