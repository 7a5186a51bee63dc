"""simple_crypto KEK continuity across an upgrade, decided from configs and defaults only
(before TO ever starts): will TO unwrap the project KEKs FROM wrapped?

The 2025.2 trap: FROM <= 20.x without a `kek =` line silently used the public default KEK,
which 21.0.0 removed. KEK values never leave this module except as fingerprints.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


def configured_keks(conf: Path) -> list[str]:
    """The `kek` values of [simple_crypto_plugin] in a barbican.conf (multi-valued)."""
    section, keks = None, []
    for raw in conf.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == "simple_crypto_plugin" and "=" in line:
            key, value = (p.strip() for p in line.split("=", 1))
            if key == "kek":
                keks.append(value)
    return keks


def fingerprint(kek: str) -> str:
    return "sha256:" + hashlib.sha256(kek.encode()).hexdigest()[:12]


@dataclass
class KekSide:
    version: str
    configured: dict[str, list[str]]  # node → kek lines in its barbican.conf (values never reported)
    default: list[str]

    def effective(self, node: str) -> list[str]:
        return self.configured.get(node) or self.default

    def describe(self) -> dict:
        return {
            "version": self.version,
            "explicit_kek": {n: bool(k) for n, k in self.configured.items()},
            "configured": {n: [fingerprint(k) for k in ks] for n, ks in self.configured.items()},
            "builtin_default": [fingerprint(k) for k in self.default],
            "effective": {n: [fingerprint(k) for k in self.effective(n)] for n in self.configured},
        }


def kek_continuity(old: KekSide, new: KekSide, at_risk: list[str]) -> dict:
    """Will TO unwrap the project KEKs FROM wrapped? Decided from configs and defaults only."""
    findings = []
    for node in old.configured:
        was, will = old.effective(node), new.effective(node)
        if not was:
            findings.append({"node": node, "kind": "no-kek-on-from",
                             "message": f"{node}: FROM {old.version} has neither a kek line nor a default KEK"})
        elif not old.configured[node] and not new.configured.get(node) and not new.default:
            findings.append({"node": node, "kind": "default-kek-removed", "message": (
                f"the 2025.2 trap on {node}: FROM {old.version}'s barbican.conf has no `kek =` line in "
                f"[simple_crypto_plugin], so every project KEK is wrapped with the built-in default KEK "
                f"({fingerprint(was[0])}); TO {new.version} has no default KEK (removed in 21.0.0, 2025.2) "
                f"and the config still sets none, so simple_crypto cannot load and the "
                f"{len(at_risk)} simple_crypto secret(s) written so far become unreadable. Before upgrading, "
                f"write the old default into [simple_crypto_plugin] explicitly (kek = {was[0]}: public, "
                f"from Barbican's source), then rotate it (new kek first, simple_crypto rewrap_pkek)")})
        elif was[0] not in will:
            findings.append({"node": node, "kind": "primary-kek-missing", "message": (
                f"{node}: TO's KEKs ({', '.join(fingerprint(k) for k in will) or 'none'}) do not include "
                f"FROM's primary KEK {fingerprint(was[0])}, which wrapped the project KEKs: the "
                f"{len(at_risk)} simple_crypto secret(s) become unreadable")})
        elif missing := [k for k in was[1:] if k not in will]:
            findings.append({"node": node, "kind": "old-kek-dropped", "warning": True, "message": (
                f"{node}: TO drops FROM's older KEK(s) {', '.join(fingerprint(k) for k in missing)}: "
                f"project KEKs still wrapped with them become unreadable")})
    return {
        "from": old.describe(), "to": new.describe(),
        "at_risk_secrets": at_risk,
        "findings": findings,
        "ok": not [f for f in findings if not f.get("warning")],
    }
