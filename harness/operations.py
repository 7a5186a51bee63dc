"""Operator procedures the harness performs as an operator would (not faults): they are
how a healthy environment changes, and scenarios check they lose nothing."""

from __future__ import annotations

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
