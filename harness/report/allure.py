"""Allure and JUnit files of a run directory.

- allure-results/environment.properties: Barbican version, topology, provider, backend,
  policy, seed (what the Allure report's Environment widget shows);
- allure-results/categories.json: triage categories → failure patterns (first match
  wins, so data loss is tested before the outages that often come with it);
- allure-results/<uuid>-result.json: one result per load threshold and per ledger
  check (uuids derived from the run, so a rebuild replaces them);
- junit.xml: one testcase per load threshold (and one per ledger check).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from harness.redact import mask
from harness.report.verdicts import VerdictFile

# Patterns on the failure messages the harness writes (threshold breaches name the
# faults of the window and the error classes; ledger failures say lost/corrupted) and
# on the log signatures of harness.triage.signatures.
_LOAD_PATTERNS: list[tuple[str, list[str], list[str]]] = [
    ("kek_mismatch_or_key_loss", ["failed", "broken"],
     [r"ledger: (lost|corrupted|resurrected)", r"DATA LOSS", r"payload_mismatch", r"kek_mismatch",
      r"kek_rotation_without_rewrap", r"hsm_key_deleted", r"crypto_plugin_removed", r"retrieval failure seen"]),
    ("backend_data_lost", ["failed", "broken"], [r"vault_mount_disabled"]),
    ("hsm_unreachable", ["failed", "broken"],
     [r"CKR_[A-Z_]+", r"hsm_token_absent", r"hsm_error", r"hsm_session_exhaustion", r"hsm_wrong_pin",
      r"creation failure seen"]),
    ("hsm_degraded", ["failed", "broken"], [r"max-p95-ms.*inside fault windows \([^)]*hsm_latency"]),
    ("backend_degraded", ["failed", "broken"],
     [r"max-p95-ms.*inside fault windows \([^)]*(db_latency|keystone_latency|vault_latency)"]),
    ("backend_access_denied", ["failed", "broken"],
     [r"vault_token_revoked", r"vault_secret_id_expired", r"vault_policy_revoked"]),
    ("acl_permission", ["failed", "broken"], [r"HTTP 403", r"Forbidden", r"acl_removal", r"not allowed"]),
    ("expiration", ["failed", "broken"], [r"expir", r"secret_expiry"]),
    ("consumed_secret_missing", ["failed", "broken"], [r"consumer_in_use_delete", r"container_member_deleted"]),
    ("auth_outage", ["failed", "broken"], [r"HTTP 401", r"keystone\.token", r"no_token", r"keystone_outage",
                                           r"keystone_latency"]),
    ("orders_stalled", ["failed", "broken"], [r"orders_stalled", r"order_error", r"worker_down", r"queue_outage"]),
    ("node_down", ["failed", "broken"], [r"node_kill", r"node_pause", r"ConnectionRefusedError"]),
    ("backend_outage", ["failed", "broken"],
     [r"HTTP 5\d\d", r"ConnectionResetError", r"TimeoutError", r"db_outage", r"db_latency", r"kmip_outage",
      r"vault_outage", r"vault_sealed", r"OperationalError"]),
]


def categories() -> list[dict]:
    """Allure categories (messageRegex must match the whole message: (?s).*(...).*)."""
    try:
        from harness.triage.signatures import SIGNATURES

        extra: dict[str, list[str]] = {}
        for sig in SIGNATURES:
            extra.setdefault(sig.category, []).append(sig.pattern.pattern)
    except Exception:  # noqa: BLE001 - the log signatures are optional here
        extra = {}
    out = []
    for name, statuses, patterns in _LOAD_PATTERNS:
        alts = patterns + [p for p in extra.get(name, []) if p not in patterns]
        out.append({"name": name, "matchedStatuses": statuses, "messageRegex": "(?s).*(" + "|".join(alts) + ").*"})
    out.append({"name": "healthy", "matchedStatuses": ["passed"], "messageRegex": "(?s).*"})
    return out


def write_environment(results: Path, facts: dict, seeds: list) -> Path:
    props = {
        "barbican.version": facts.get("barbican_version", "unknown"),
        "topology": facts.get("topology", ""),
        "provider": facts.get("provider", ""),
        "backend": ",".join(facts.get("backends", [])),
        "policy": facts.get("policy", ""),
        "api.nodes": str(len(facts.get("nodes", []))),
        "run.id": facts.get("run_id", ""),
        "seed": ",".join(str(s) for s in seeds),
    }
    path = results / "environment.properties"
    path.write_text(mask("".join(f"{k}={_prop(v)}\n" for k, v in props.items())))
    return path


def _prop(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace("=", "\\=").replace(":", "\\:")


def _cases(loads: list[dict]) -> list[dict]:
    """One case per threshold and per ledger check: name, status, message, details."""
    cases = []
    for r in loads:
        for v in r.get("verdicts", []):
            details = "\n".join(c["message"] for c in v["checks"])
            cases.append({"load": r["_id"], "name": f"threshold {v['threshold']['label']}",
                          "status": "passed" if v["passed"] else "failed", "message": v["message"], "details": details,
                          "feature": "thresholds"})
        led = r.get("ledger")
        if led:
            bad = {k: led.get(k, []) for k in ("lost", "corrupted", "resurrected", "unexpected") if led.get(k)}
            msg = ("ledger: nothing lost: " if led.get("ok") else "ledger: " + ", ".join(
                f"{k} {len(v)}" for k, v in bad.items()) + ": ") + \
                f"{led.get('verified', 0)}/{led.get('acknowledged', 0)} acknowledged creates read back"
            cases.append({"load": r["_id"], "name": "ledger: every acknowledged write survives",
                          "status": "passed" if led.get("ok") else "failed", "message": msg,
                          "details": json.dumps(bad, indent=1), "feature": "integrity"})
    return cases


def verdict_cases(verdict: VerdictFile | None) -> list[dict]:
    """One case per check of verdict.json (a scenario, each incident, round trip and
    conformance run of a campaign ...)."""
    if verdict is None:
        return []
    return [{"suite": verdict.kind, "load": c.suite, "name": f"{c.suite} {c.name}",
             "status": "passed" if c.passed else "failed", "message": c.message[:2000],
             "details": json.dumps(c.details, indent=1, default=str), "feature": c.suite}
            for c in verdict.checks]


def write_results(results: Path, run_id: str, loads: list[dict], verdict: VerdictFile | None = None) -> list[Path]:
    paths = []
    now = int(time.time() * 1000)
    for case in verdict_cases(verdict) + _cases(loads):
        key = f"{run_id}/{case['load']}/{case['name']}"
        rid = str(uuid.uuid5(uuid.NAMESPACE_URL, "barbican-harness:" + key))
        body = {
            "uuid": rid, "historyId": str(uuid.uuid5(uuid.NAMESPACE_URL, "barbican-harness-history:" + case["name"])),
            "name": case["name"], "fullName": f"{case.get('suite', 'load')}.{case['load']}.{case['name']}",
            "status": case["status"],
            "statusDetails": {"message": case["message"], "trace": case["details"]}, "stage": "finished",
            "start": now, "stop": now,
            "labels": [{"name": "parentSuite", "value": run_id}, {"name": "suite", "value": case.get("suite", "load")},
                       {"name": "subSuite", "value": case["load"]}, {"name": "feature", "value": case["feature"]},
                       {"name": "framework", "value": "barbican-harness"}],
        }
        path = results / f"{rid}-result.json"
        path.write_text(mask(json.dumps(body, indent=1)))
        paths.append(path)
    return paths


def write_junit(path: Path, run_id: str, loads: list[dict], verdict: VerdictFile | None = None) -> Path:
    cases = verdict_cases(verdict) + _cases(loads)
    failures = sum(c["status"] != "passed" for c in cases)
    out = ['<?xml version="1.0" encoding="utf-8"?>',
           f'<testsuites><testsuite name={quoteattr("barbican-harness " + run_id)} tests="{len(cases)}" '
           f'failures="{failures}" errors="0" skipped="0">']
    for c in cases:
        classname = f"{c.get('suite', 'load')}.{c['load']}"
        out.append(f'<testcase classname={quoteattr(classname)} name={quoteattr(c["name"])} time="0">')
        if c["status"] != "passed":
            out.append(f'<failure message={quoteattr(c["message"][:2000])}>{escape(c["details"])}</failure>')
        out.append(f"<system-out>{escape(c['message'])}</system-out></testcase>")
    out.append("</testsuite></testsuites>")
    path.write_text(mask("\n".join(out)))
    return path
