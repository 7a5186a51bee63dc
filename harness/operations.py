"""Operator procedures the harness performs as an operator would (not faults): they are
how a healthy environment changes, and scenarios check they lose nothing."""

from __future__ import annotations

import json
import re

from cryptography.fernet import Fernet, InvalidToken

from harness import redact
from harness.context import fernet_key
from harness.environment import SECRETS_FILE
from harness.errors import HarnessError, ServiceStartError
from harness.target import Capability

CONFIG, DATABASE, MANAGE = Capability.CONFIG_WRITE, Capability.DATABASE, Capability.MANAGE
# What every procedure here needs of its target.
NEEDS = frozenset({Capability.API, CONFIG, DATABASE, MANAGE})
SIMPLE_CRYPTO_PLUGIN = "barbican.plugin.crypto.simple_crypto.SimpleCryptoPlugin"


def unreadable_simple_crypto_pkeks(env, kek: str) -> list[str]:
    """Barbican project ids whose simple_crypto project KEK `kek` cannot unwrap.

    The preflight an operator wants before a rotation: such a project was lost before the
    rotation (e.g. its pKEK was made by a node running with another KEK), so rewrap_pkek
    can only report an error for it, and that error is not the rotation's doing."""
    master = Fernet(kek.encode())
    with env.facet(DATABASE).connect("barbican") as conn, conn.cursor() as cur:
        cur.execute("SELECT project_id, plugin_meta FROM kek_data WHERE plugin_name = %s AND deleted = 0",
                    (SIMPLE_CRYPTO_PLUGIN,))
        rows = cur.fetchall()
    bad = set()
    for project_id, wrapped in rows:
        try:
            master.decrypt(wrapped.encode() if isinstance(wrapped, str) else (wrapped or b""))
        except InvalidToken:
            bad.add(project_id)
    return sorted(bad)


def _projects_with_errors(output: str) -> set[str]:
    """Projects whose block of rewrap_pkek output holds "Error occurred!" (it prints one
    "Retrieving KEKs for Project <id>" line per project, then one line per failure)."""
    failed, current = set(), None
    for line in output.splitlines():
        m = re.match(r"Retrieving KEKs for Project (\S+)", line)
        if m:
            current = m.group(1)
        elif line.startswith("Error occurred") and current:
            failed.add(current)
    return failed


def rotate_simple_crypto_kek(env) -> dict:
    """The documented simple_crypto KEK rotation (release note simple-crypto-kek-rotation):
    1. the new KEK first, the old one kept after it, every node restarted;
    2. `barbican-manage simple_crypto rewrap_pkek` re-wraps every project KEK;
    3. the old KEK removed, every node restarted.

    `rewrap_pkek` exits 0 even when it skipped a project, so success is judged from the
    data: afterwards every project KEK the old KEK could unwrap must unwrap with the new
    one. Projects already unreadable before (a preflight with the old KEK) are reported,
    not blamed on the rotation."""
    old, new = env.ctx.secrets.kek, fernet_key()
    redact.register(new)
    lost_before = unreadable_simple_crypto_pkeks(env, old)
    config, manage = env.facet(CONFIG), env.facet(MANAGE)
    for node in env.nodes:
        config.restart_with(node.name, {"keks": [new, old]})
    output = manage.run(env.nodes[0].name, "simple_crypto", "rewrap_pkek")
    failed_now = _projects_with_errors(output) - set(lost_before)
    not_rewrapped = sorted(set(unreadable_simple_crypto_pkeks(env, new)) - set(lost_before))
    if failed_now or not_rewrapped:
        raise HarnessError(f"barbican-manage simple_crypto rewrap_pkek left {len(not_rewrapped)} project KEK(s) "
                           f"unreadable with the new KEK and reported errors for {len(failed_now)} project(s) "
                           f"that were readable before (it exits 0 anyway): "
                           f"{', '.join(sorted(set(not_rewrapped) | failed_now)[:5])}; "
                           "see logs/barbican-manage.log")
    env.ctx.secrets.kek = new
    env.ctx.secrets.save(env.run_dir / SECRETS_FILE)
    for node in env.nodes:
        config.restart_with(node.name, {})
    return {"rewrapped_projects": len(re.findall(r"(?m)^Retrieving KEKs for Project ", output)),
            "unreadable_before_rotation": len(lost_before)}


def rotate_mkek_with_rewrap(env, label: str | None = None) -> dict:
    """The documented PKCS#11 MKEK rotation: a new MKEK (`barbican-manage hsm gen_mkek
    --label NEW`), every node switched to it, then `barbican-manage hsm rewrap_pkek`.

    Barbican 23's rewrap_pkek is broken (TypeError on the IV with key_wrap_generate_iv =
    False, and a wrong unwrap_key call) yet exits 0. So success is judged from the data:
    every project KEK's metadata must name the new MKEK afterwards."""
    label = label or f"barbican_mkek_{fernet_key()[:6].lower().replace('-', 'x').replace('_', 'x')}"
    config, manage = env.facet(CONFIG), env.facet(MANAGE)
    first = env.nodes[0].name
    manage.run(first, "hsm", "gen_mkek", "--label", label)
    for node in env.nodes:
        config.restart_with(node.name, {**config.overrides(node.name), "p11": {"mkek_label": label}})
    # Run on the node as the operator would (local process or `docker exec`); the output,
    # stderr included, is in logs/barbican-manage.log either way.
    try:
        output, exit_ok = manage.run(first, "hsm", "rewrap_pkek", timeout=180), True
    except ServiceStartError as exc:
        output, exit_ok = str(exc), False
    with env.facet(DATABASE).connect("barbican") as conn, conn.cursor() as cur:
        cur.execute("SELECT plugin_meta FROM kek_data WHERE plugin_name LIKE %s AND deleted = 0", ("%P11%",))
        labels = [json.loads(row[0]).get("mkek_label") for row in cur.fetchall() if row[0]]
    log = env.ctx.logs_dir / "barbican-manage.log"
    logged = log.read_text(errors="replace") if log.exists() else output
    # The log's command line names barbican-manage by its full path when run locally.
    tail = logged[logged.rfind("barbican-manage hsm rewrap_pkek"):]
    stale = sum(1 for lbl in labels if lbl != label)
    return {"label": label, "rewrap_reported_success": exit_ok,
            "errors_in_output": any(s in tail for s in ("Error occurred", "Traceback", "TypeError")),
            "project_keks": len(labels), "still_on_old_mkek": stale, "pkeks_rewrapped": stale == 0 and bool(labels)}
