"""The one-page HTML report of a run directory: inline CSS and inline SVG only.

Sections: verdicts (verdict.json and each load run's thresholds and ledger), the
environment, then per load run (newest first): fault windows, latency p50/p95 and
request rate over time with the windows shaded, errors over time by class, thresholds,
per-request statistics inside/outside the windows, the ledger, PKCS#11 operations from
the shim, Locust's merged totals. The caller masks the whole page (redact.mask).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from html import escape
from pathlib import Path

from harness.report import svg
from harness.report.verdicts import VerdictFile

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1100px;color:#212529;
background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 8px;border-bottom:2px solid #dee2e6;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.muted{color:#6c757d}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}th,td{border:1px solid #dee2e6;padding:3px 8px;
text-align:left;vertical-align:top;white-space:pre-line}th{background:#f1f3f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#2b8a3e;font-weight:600}.fail{color:#c92a2a;font-weight:600}.warn{color:#e67700;font-weight:600}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;font-weight:600}
.badge.pass{background:#2b8a3e;color:#fff}.badge.fail{background:#c92a2a;color:#fff}
svg.chart{display:block;margin:8px 0 14px;border:1px solid #e9ecef;background:#fcfcfd}
svg .axis{stroke:#495057;stroke-width:1}svg .grid{stroke:#e9ecef;stroke-width:1}
svg text{font-size:11px;fill:#495057}svg .ctitle{font-size:13px;font-weight:600;fill:#212529}
svg .wlabel{font-size:11px;font-weight:600}svg .legend{font-size:11px}
code{background:#f1f3f5;padding:0 3px;border-radius:3px}details{margin:4px 0 10px}
"""


# The operations that carry Barbican's crypto work, in the order they are charted.
HSM_CHART_FUNCTIONS = ("C_Encrypt", "C_Decrypt", "C_WrapKey", "C_UnwrapKey", "C_GenerateKey", "C_GenerateRandom",
                       "C_Sign", "C_Verify", "C_OpenSession", "C_Login")


def _t(rows: list[list], head: list[str], cls: str = "", tid: str = "") -> str:
    attrs = (f' class="{cls}"' if cls else "") + (f' id="{tid}"' if tid else "")
    out = [f"<table{attrs}><thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for row in rows:
        cells = []
        for v in row:
            if isinstance(v, _Raw):
                cells.append(f"<td>{v.html}</td>")
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                cells.append(f'<td class="num">{_num(v)}</td>')
            else:
                cells.append(f"<td>{escape('' if v is None else str(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


class _Raw:
    def __init__(self, html: str):
        self.html = html


def _num(v: float | int | None) -> str:
    if v is None:
        return "–"
    if isinstance(v, int):
        return f"{v:,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.4g}"


def _ok(passed: bool, yes: str = "PASS", no: str = "FAIL") -> _Raw:
    return _Raw(f'<span class="badge {"pass" if passed else "fail"}">{yes if passed else no}</span>')


def _ms(v) -> str:
    return "–" if v is None else f"{v:,.0f}"


# -- sections --------------------------------------------------------------------------------
def environment_section(state: dict, facts: dict, status: str = "", created: str = "") -> str:
    """`status` and `created`: what a run without an environment of its own (a scenario,
    a campaign) shows instead of the state file's (see run_status / run_created)."""
    rows = [["run id", state.get("run_id") or facts.get("run_id")],
            ["topology", (state.get("topology") or {}).get("name") or facts.get("topology")],
            ["provider", state.get("provider") or facts.get("provider")],
            ["backends", ", ".join(facts.get("backends") or
                                   [s.get("backend", "") for s in (state.get("topology") or {}).get("stores", [])])],
            ["policy", facts.get("policy") or (state.get("topology") or {}).get("policy")],
            ["Barbican version", facts.get("barbican_version", "")],
            ["Barbican build", _build_text(state.get("build"))],
            ["Keystone", state.get("keystone_url") or facts.get("keystone_url")],
            ["status", state.get("status") or status], ["created", state.get("created") or created]]
    nodes = [[n.get("name"), n.get("url")] for n in (state.get("nodes") or facts.get("nodes") or [])]
    procs = [[p.get("name"), p.get("pid"), ", ".join(map(str, p.get("ports", [])))] for p in state.get("processes", [])]
    html = _t(rows, ["", ""], tid="environment") + _t(nodes, ["API node", "endpoint"], tid="nodes")
    if procs:
        html += "<details><summary>processes</summary>" + _t(procs, ["process", "pid", "ports"]) + "</details>"
    return "<h2>Environment</h2>" + html


_STAMP = re.compile(r"-(\d{8})-(\d{6})-[0-9a-f]{4}$")


def run_created(run_dir: Path) -> str:
    """When a run began: the stamp its id carries (new_run_id, the runner, the campaign),
    else its oldest file's time."""
    m = _STAMP.search(run_dir.name)
    if m:
        return dt.datetime.strptime(m.group(1) + m.group(2), "%Y%m%d%H%M%S").isoformat()
    times = [p.stat().st_mtime for p in run_dir.iterdir()] if run_dir.is_dir() else []
    return dt.datetime.fromtimestamp(min(times)).isoformat(timespec="seconds") if times else ""


def run_status(verdict: VerdictFile | None, loads: list[dict]) -> str:
    """A finished run's status from what it judged (its verdict, else its load runs)."""
    if verdict is not None:
        return f"finished: {'passed' if verdict.passed else 'failed'}"
    if loads:
        return f"finished: {'passed' if all(r.get('ok') for r in loads) else 'failed'}"
    return "unknown (no state.json, no verdict.json)"


def _build_text(build: dict | None) -> str:
    if not build:
        return ""
    return f"{build.get('source')}" + (f", commit {build['commit']}" if build.get("commit") else "") + \
        (f", image {build['image']}" if build.get("image") else "")


def upgrade_section(gate: dict | None) -> str:
    """upgrade-gate.json: the path, each hop, and each phase of a rolling hop."""
    if not gate:
        return ""
    html = [f'<h2 id="upgrade-gate">Upgrade gate {_ok(gate.get("verdict") == "PASS", "PASS", gate.get("verdict", "?")).html}'
            + (f' zero-downtime: {_ok(bool(gate["zero_downtime"]), "yes", "no").html}'
               if gate.get("zero_downtime") is not None else "") + "</h2>",
            f'<p class="muted">{gate.get("topology")} on {gate.get("provider")}, '
            f'{"rolling under load" if gate.get("rolling") else "every node stopped"}; '
            f'{gate.get("seconds")} s; exit {gate.get("exit_code")}</p>']
    html.append(_t([[b.get("label"), _build_text(b), b.get("constraints")] for b in gate.get("builds", [])],
                   ["build", "source", "pins"], tid="upgrade-builds"))
    rows = []
    for h in gate.get("hops", []):
        v = h.get("verification", {})
        rows.append([f"{h['from_build']} → {h['to_build']}", h["mode"],
                     f"{h.get('db_revision', {}).get('before')} → {h.get('db_revision', {}).get('after')}",
                     f"{v.get('verified', 0)} / {v.get('acknowledged', 0)}", len(h.get("unreadable_secrets", {})),
                     _ok(bool(h.get("new_operations", {}).get("ok"))), _ok(bool(h.get("ok")))])
    html.append(_t(rows, ["hop", "mode", "schema", "seeded secrets read back", "unreadable", "new secrets", "result"],
                   tid="upgrade-hops", cls="hops"))
    for i, h in enumerate(gate.get("hops", []), 1):
        rolling = h.get("rolling") or {}
        if not rolling.get("phases"):
            continue
        prow = [[p["phase"], f"{p['from_s']:g}–{p['to_s']:g}", p["requests"], p["failures"], p["error_ratio"],
                 _ms(p.get("p50_ms")), _ms(p.get("p95_ms")), ", ".join(f"{k} x{n}" for k, n in p["errors"].items()),
                 "; ".join(p["breaches"] + ([p["error"]] if p.get("error") else [])) or ", ".join(p["limits"]),
                 _ok(p["ok"])] for p in rolling["phases"]]
        led = (rolling.get("load") or {}).get("ledger") or {}
        html.append(f"<h3>Hop {i}: rolling {escape(h['from_build'])} → {escape(h['to_build'])}, phase by phase "
                    f"{_ok(bool(rolling.get('zero_downtime')), 'zero-downtime', 'downtime').html}</h3>"
                    + _t(prow, ["phase", "window (s)", "requests", "failures", "error ratio", "p50 (ms)", "p95 (ms)",
                                "errors", "limits / breaches", "result"], tid=f"phases-{i}", cls="phases")
                    + f'<p class="muted">Load ledger: {led.get("verified", 0)} / {led.get("acknowledged", 0)} writes '
                      f'acknowledged during the rollout read back on TO; windows are the load run '
                      f'{escape(Path(rolling["load"]["out_dir"]).name)} below.</p>')
    if gate.get("failures"):
        html.append("<ul>" + "".join(f"<li>{escape(f)}</li>" for f in gate["failures"]) + "</ul>")
    return "".join(html)


def verdict_rows(verdict: VerdictFile) -> tuple[list[str], list[list]]:
    """The report columns of every check (each check's `row`, in order of first use)."""
    head: list[str] = []
    for c in verdict.checks:
        for k in c.row:
            if k not in head:
                head.append(k)
    rows = [[_cell(c.row.get(k)) for k in head] for c in verdict.checks]
    return head, rows


def _cell(v):
    if isinstance(v, (dict, list)):
        return json.dumps(v)[:300]
    return v


def verdicts_section(verdict: VerdictFile | None, loads: list[dict]) -> str:
    html = ["<h2>Verdicts</h2>"]
    if verdict is not None:
        head, rows = verdict_rows(verdict)
        state = _ok(verdict.passed).html
        html.append(f"<h3>{escape(verdict.kind)} {escape(verdict.name)}: {state}</h3>"
                    + _t(rows, head, tid="verdict-json"))
    rows = []
    for r in loads:
        breached = [v for v in r.get("verdicts", []) if not v["passed"]]
        ledger = r.get("ledger") or {}
        n = len(r.get("verdicts", []))
        msgs = [c["message"] for v in breached for c in v["checks"] if not c["passed"]]
        shown = "\n".join(msgs[:3]) + (f"\n(and {len(msgs) - 3} more)" if len(msgs) > 3 else "")
        rows.append([r["_id"], _ok(not breached),
                     shown or (f"{n} threshold(s) met" if n else "no threshold configured"),
                     _ok(bool(ledger.get("ok")), "NOTHING LOST", "DATA LOSS") if ledger else "not checked",
                     "; ".join(r.get("errors", []))[:300]])
    if rows:
        html.append(_t(rows, ["load run", "thresholds", "breaches", "ledger", "run errors"], tid="verdicts",
                       cls="verdicts"))
    elif verdict is None:
        html.append('<p class="muted" id="verdicts">No verdict.json and no load run in this run directory.</p>')
    return "".join(html)


def _windows(r: dict) -> list[svg.Window]:
    out = []
    for w in r.get("windows", []):
        if w.get("injected_rel") is None or w.get("error"):
            continue
        end = w.get("healed_rel")
        if end is None:
            end = (r.get("ended_wall") or 0) - (r.get("started_wall") or 0)
        out.append(svg.Window(w["fault"], w["injected_rel"], end, json.dumps(w.get("params", {}))))
    return out


def load_section(r: dict) -> str:
    p = r["params"]
    faults = ", ".join(f"{e['fault']} @{e['at']:g}s" + (f"→{e['heal_at']:g}s" if e.get("heal_at") else "")
                       for e in p.get("timeline", [])) or "no faults"
    ok = not [v for v in r.get("verdicts", []) if not v["passed"]] and (r.get("ledger") or {}).get("ok", True) \
        and not r.get("errors")
    html = [f'<h2 id="load-{escape(r["_id"])}">Load run {escape(r["_id"])} {_ok(ok).html}</h2>',
            f'<p class="muted">{p["users"]} users, spawn rate {p["spawn_rate"]:g}/s, {p["duration"]:g} s, '
            f'{"master + %d workers" % p["workers"] if p.get("workers") else "one Locust process"}, '
            f'seed {p.get("seed")}, weights {escape(json.dumps(p.get("weights", {})))}; faults: {escape(faults)}</p>']
    windows = _windows(r)
    html.append("<h3>Fault windows</h3>")
    wrows = [[w["fault"], json.dumps(w.get("params", {})), w.get("injected_rel"), w.get("healed_rel"),
              w.get("error") or ""] for w in r.get("windows", [])]
    html.append(_t(wrows, ["fault", "params", "injected (s)", "healed (s)", "error"], tid=f"windows-{r['_id']}",
                   cls="windows") if wrows else '<p class="muted">No fault in this run.</p>')
    html.append(charts(r, windows))
    html.append(thresholds_table(r))
    html.append(request_table(r))
    html.append(ledger_table(r))
    html.append(hsm_table(r))
    html.append(locust_tables(r))
    if r.get("errors"):
        html.append("<h3>Run errors</h3><ul>" + "".join(f"<li>{escape(e)}</li>" for e in r["errors"]) + "</ul>")
    arts = [a for a in ("locust.html", "locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv",
                        "result.json", "hsm_stats.json") if (Path(r["out_dir"]) / a).exists()]
    if arts:
        html.append('<p class="muted">Files: ' + ", ".join(
            f'<a href="{escape(r.get("_rel", "load/" + r["_id"]))}/{a}">{a}</a>' for a in arts) + "</p>")
    return "".join(html)


def charts(r: dict, windows: list[svg.Window]) -> str:
    ps = r.get("per_second", [])
    if not ps:
        return '<p class="muted">No request statistics.</p>'
    ps = _fill_gaps(ps)
    x_max = max([s["t"] + 1 for s in ps] + [w.end for w in windows])
    x_range = (min(0.0, ps[0]["t"]), x_max)
    out = [svg.line_chart(
        svg.Chart("latency", "Response time p50 / p95, all requests (ms, log scale)", "ms", x_range, windows, log_y=True),
        [svg.Line("p95", [(s["t"], s["p95"]) for s in ps], "#d62728"),
         svg.Line("p50", [(s["t"], s["p50"]) for s in ps], "#1f77b4")])]
    out.append(svg.line_chart(
        svg.Chart("rate", "Requests per second (by start time)", "req/s", x_range, windows),
        [svg.Line("requests/s", [(s["t"], s["n"]) for s in ps], "#1f77b4"),
         svg.Line("failures/s", [(s["t"], s["f"]) for s in ps], "#d62728")]))
    classes: dict[str, list[float]] = {}
    for s in ps:
        for k in s.get("errors", {}):
            classes.setdefault(k, [0.0] * len(ps))
    for i, s in enumerate(ps):
        for k, v in s.get("errors", {}).items():
            classes[k][i] = v
    out.append(svg.stacked_bars(
        svg.Chart("errors", "Errors per second by class (HTTP status / exception)", "errors/s", x_range, windows),
        [s["t"] for s in ps], dict(sorted(classes.items(), key=lambda kv: -sum(kv[1])))))
    per_name = r.get("per_name", {})
    busiest = sorted(per_name, key=lambda n: -sum(row[1] for row in per_name[n]))[:6]
    if busiest:
        out.append(svg.line_chart(
            svg.Chart("latency-by-name", "p95 by request name (ms, log scale)", "ms", x_range, windows, log_y=True),
            [svg.Line(n, _gapped(per_name[n]), width=1.2) for n in busiest]))
    hsm = r.get("hsm") or {}
    samples = hsm.get("samples", [])
    if len(samples) > 1:
        start = r.get("started_wall") or samples[0]["t"]
        funcs = hsm.get("functions", {})
        top = [fn for fn in HSM_CHART_FUNCTIONS if fn in funcs][:6]
        lines = []
        for fn in top:
            pts = []
            for a, b in zip(samples, samples[1:]):
                dt_ = b["t"] - a["t"]
                if dt_ > 0:
                    pts.append((b["t"] - start, max(0, b["calls"].get(fn, 0) - a["calls"].get(fn, 0)) / dt_))
            lines.append(svg.Line(fn, pts, width=1.4))
        out.append(svg.line_chart(svg.Chart("hsm", "PKCS#11 calls per second (fault shim)", "calls/s", x_range,
                                            windows), lines))
    return "<h3>Over time</h3>" + "".join(out)


def _fill_gaps(ps: list[dict]) -> list[dict]:
    """Seconds in which no request started are present with zero requests and no
    percentiles, so lines break there instead of bridging the gap."""
    out: list[dict] = []
    for s in ps:
        if out:
            t = out[-1]["t"] + 1
            while t < s["t"] - 0.5:
                out.append({"t": t, "n": 0, "f": 0, "p50": None, "p95": None, "errors": {}})
                t += 1
        out.append(s)
    return out


def _gapped(rows: list[list]) -> list[tuple[float, float | None]]:
    """(t, p95) points of one request name with None where seconds are missing."""
    pts: list[tuple[float, float | None]] = []
    for row in rows:
        if pts and row[0] - pts[-1][0] > 1.5:
            pts.append((pts[-1][0] + 1, None))
        pts.append((row[0], row[3]))
    return pts


def thresholds_table(r: dict) -> str:
    vs = r.get("verdicts", [])
    if not vs:
        return '<h3>Thresholds</h3><p class="muted">No threshold configured.</p>'
    rows, checks = [], []
    for v in vs:
        lines = [re.sub(r"^threshold '[^']*' breached by ", "", c["message"]) for c in v["checks"] if not c["passed"]]
        shown = "\n".join(lines[:8]) + (f"\n(and {len(lines) - 8} more)" if len(lines) > 8 else "")
        rows.append([v["threshold"]["label"], _ok(v["passed"]), shown or v["message"]])
        for c in v["checks"]:
            measured = c["measured"]
            shown = "no requests" if measured is None else (
                f"{measured:.4f}" if v["threshold"]["metric"] == "error_ratio" else f"{measured:,.0f} ms")
            checks.append([v["threshold"]["label"], c["phase"], c["name"], shown, c["requests"], c["failures"],
                           _ok(c["passed"])])
    return ("<h3>Thresholds</h3>" + _t(rows, ["threshold", "result", "measured"], tid=f"thresholds-{r['_id']}",
                                        cls="thresholds")
            + "<details><summary>every check (per request name, inside / outside fault windows)</summary>"
            + _t(checks, ["threshold", "phase", "request", "measured", "requests", "failures", "result"]) + "</details>")


def request_table(r: dict) -> str:
    ps = r.get("phase_stats", {})
    if not ps:
        return ""
    names = sorted(ps.get("all", {}), key=lambda n: (n == "Aggregated", n))
    ws = r.get("window_stats", [])
    rows = []
    for n in names:
        a, o, i = ps["all"].get(n, {}), ps.get("outside", {}).get(n, {}), ps.get("inside", {}).get(n, {})
        row = [n, a.get("requests"), a.get("failures"), o.get("error_ratio"), i.get("error_ratio") if i.get("requests") else None,
               _ms(o.get("p50_ms")), _ms(o.get("p95_ms")), _ms(i.get("p95_ms"))]
        row += [_ms(w["stats"].get(n, {}).get("p95_ms")) for w in ws]
        rows.append(row)
    head = ["request", "requests", "failures", "error ratio outside", "error ratio inside", "p50 outside (ms)",
            "p95 outside (ms)", "p95 inside (ms)"] + [f"p95 in {w['fault']} (ms)" for w in ws]
    return "<h3>Requests, outside and inside fault windows</h3>" + _t(rows, head, tid=f"requests-{r['_id']}",
                                                                       cls="requests")


def ledger_table(r: dict) -> str:
    led = r.get("ledger")
    if not led:
        return '<h3>Integrity ledger</h3><p class="muted">Not checked.</p>'
    rows = [["verdict", _ok(bool(led.get("ok")), "NOTHING LOST", "DATA LOSS")],
            ["acknowledged creates read back byte-identical", f"{led.get('verified', 0)} / {led.get('acknowledged', 0)}"],
            ["lost (acknowledged, unreadable after heal)", len(led.get("lost", []))],
            ["corrupted (payload differs)", len(led.get("corrupted", []))],
            ["resurrected (deleted, readable again)", len(led.get("resurrected", []))],
            ["unexpected (failed create that exists / unknown name)", len(led.get("unexpected", []))],
            ["unanswered creates: present / absent", f"{led.get('unknown_present', 0)} / {led.get('unknown_missing', 0)}"],
            ["acknowledged deletes verified gone", led.get("deletes_verified", 0)],
            ["ledger entries (final outcome per write)", ", ".join(f"{k} {v}" for k, v in led.get("entries", {}).items())],
            ["name prefix", led.get("prefix", "")]]
    html = "<h3>Integrity ledger</h3>" + _t(rows, ["", ""], tid=f"ledger-{r['_id']}", cls="ledger")
    bad = [(k, ref) for k in ("lost", "corrupted", "resurrected", "unexpected") for ref in led.get(k, [])]
    if bad:
        html += _t([[k, ref, led.get("unreadable", {}).get(ref, "")] for k, ref in bad[:100]], ["problem", "ref", "why"])
    return html


def hsm_table(r: dict) -> str:
    hsm = r.get("hsm")
    if not hsm:
        return ""
    rows = [[fn, e["calls"], e["errors"], e["injected"], e["mean_ms"]] for fn, e in hsm.get("functions", {}).items()]
    note = ('<p class="muted">Counted by the PKCS#11 fault shim in every process that loads the HSM module; '
            "mean time is the real module's (injected delays are not included).</p>")
    return "<h3>HSM operations (PKCS#11 calls during the run)</h3>" + note + _t(
        rows, ["function", "calls", "errors", "injected", "mean ms"], tid=f"hsm-{r['_id']}", cls="hsm")


def locust_tables(r: dict) -> str:
    loc = r.get("locust", {})
    stats = loc.get("stats", [])
    html = ""
    if stats:
        rows = [[s["type"], s["name"], s["requests"], s["failures"], s["median_ms"], s["p95_ms"], s["rps"]] for s in stats]
        html += ("<details><summary>Locust's merged totals (locust_stats.csv)</summary>"
                 + _t(rows, ["type", "name", "requests", "failures", "median ms", "p95 ms", "req/s"],
                      cls="locust", tid=f"locust-{r['_id']}") + "</details>")
    fails = loc.get("failures", [])
    if fails:
        rows = [[f["method"], f["name"], f["error"], f["occurrences"]] for f in fails[:50]]
        html += ("<details><summary>Failures by message</summary>"
                 + _t(rows, ["method", "name", "error", "occurrences"]) + "</details>")
    return html


def render(run_dir: Path, state: dict, verdict: VerdictFile | None, loads: list[dict],
           gate: dict | None = None) -> str:
    facts = loads[0].get("environment", {}) if loads else {}
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    body = [f"<h1>Barbican harness report: {escape(state.get('run_id') or run_dir.name)}</h1>",
            f'<p class="muted">Generated {now} from {escape(str(run_dir))}. '
            f"{len(loads)} load run(s). Self-contained: no scripts, no network.</p>",
            verdicts_section(verdict, loads), upgrade_section(gate),
            environment_section(state, facts, run_status(verdict, loads), run_created(run_dir))]
    body += [load_section(r) for r in loads]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Barbican harness report {escape(state.get('run_id') or run_dir.name)}</title>"
            f"<style>{CSS}</style></head><body>" + "\n".join(body) + "</body></html>")
