"""Operator procedures the harness performs as an operator would (not faults): they are
how a healthy environment changes, and scenarios check they lose nothing."""

from __future__ import annotations

import json
import re

from harness import redact
from harness.context import fernet_key
from harness.environment import SECRETS_FILE
from harness.errors import HarnessError


def rotate_simple_crypto_kek(env) -> dict:
    """The documented simple_crypto KEK rotation (release note simple-crypto-kek-rotation):
    1. the new KEK first, the old one kept after it, every node restarted;
    2. `barbican-manage simple_crypto rewrap_pkek` re-wraps every project KEK;
    3. the old KEK removed, every node restarted.
    `rewrap_pkek` exits 0 even when it skipped a project, so its output is checked too."""
    old, new = env.ctx.secrets.kek, fernet_key()
    redact.register(new)
    for node in env.nodes:
        env.provider.restart_node(node.name, {"keks": [new, old]})
    output = env.provider.nodes[0].manage("simple_crypto", "rewrap_pkek")
    if "Error occurred" in output or "Traceback" in output:
        raise HarnessError("barbican-manage simple_crypto rewrap_pkek reported errors (it exits 0 anyway); "
                           "see logs/barbican-manage.log")
    env.ctx.secrets.kek = new
    env.ctx.secrets.save(env.run_dir / SECRETS_FILE)
    for node in env.nodes:
        env.provider.restart_node(node.name, {})
    return {"rewrapped_projects": len(re.findall(r"(?m)^Retrieving KEKs for Project ", output))}


def rotate_mkek_with_rewrap(env, label: str | None = None) -> dict:
    """The documented PKCS#11 MKEK rotation: a new MKEK (`barbican-manage hsm gen_mkek
    --label NEW`), every node switched to it, then `barbican-manage hsm rewrap_pkek`.

    Barbican 23's rewrap_pkek is broken (TypeError on the IV with key_wrap_generate_iv =
    False, and a wrong unwrap_key call) yet exits 0. So success is judged from the data:
    every project KEK's metadata must name the new MKEK afterwards."""
    import subprocess

    label = label or f"barbican_mkek_{fernet_key()[:6].lower().replace('-', 'x').replace('_', 'x')}"
    first = env.provider.nodes[0]
    first.manage("hsm", "gen_mkek", "--label", label)
    for node in env.nodes:
        env.provider.restart_node(node.name, {**env.provider.node(node.name).overrides, "p11": {"mkek_label": label}})
    proc = subprocess.run([env.ctx.bin("barbican-manage"), "hsm", "rewrap_pkek"],
                          env=env.provider.config.env(first.home), capture_output=True, text=True, timeout=180)
    output = redact.mask(proc.stdout + proc.stderr)
    (env.run_dir / "logs" / "barbican-manage.log").open("a").write(f"$ barbican-manage hsm rewrap_pkek\n{output}\n"
                                                                   f"[exit {proc.returncode}]\n")
    with env.provider.database.connect("barbican") as conn, conn.cursor() as cur:
        cur.execute("SELECT plugin_meta FROM kek_data WHERE plugin_name LIKE %s AND deleted = 0", ("%P11%",))
        labels = [json.loads(row[0]).get("mkek_label") for row in cur.fetchall() if row[0]]
    stale = sum(1 for lbl in labels if lbl != label)
    return {"label": label, "rewrap_exit": proc.returncode, "rewrap_reported_success": proc.returncode == 0,
            "errors_in_output": "Error occurred" in output or "Traceback" in output or "TypeError" in output,
            "project_keks": len(labels), "still_on_old_mkek": stale, "pkeks_rewrapped": stale == 0 and bool(labels)}
