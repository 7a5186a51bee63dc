"""Token provisioning: a throwaway SoftHSM token for one qualification run."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness.qualify.checks import Target

class ThrowawaySoftHSM:
    """A SoftHSM token of its own (own SOFTHSM2_CONF and token directory, random PINs kept
    in memory) for one qualification run. SOFTHSM2_CONF is set in os.environ while the
    context is active: enter it BEFORE the module is loaded (SoftHSM reads it at C_Initialize)."""

    def __init__(self, module: str, base_dir: str | Path | None = None, util: str | None = None):
        self.module = module
        self.base_dir = Path(base_dir) if base_dir else None
        self.util = util or shutil.which("softhsm2-util")
        self.dir: Path | None = None
        self._saved_env: str | None = None
        self.target: Target | None = None

    def __enter__(self) -> Target:
        if not self.util:
            raise RuntimeError("softhsm2-util not found: install the Debian package 'softhsm2'")
        self.dir = Path(tempfile.mkdtemp(prefix="p11-qualify-", dir=self.base_dir))
        tokens = self.dir / "tokens"
        tokens.mkdir(mode=0o700)
        conf = self.dir / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                        "log.level = ERROR\nslots.removable = false\n")
        label = f"qualify-{secrets.token_hex(4)}"
        pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
        env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
        proc = subprocess.run([self.util, "--init-token", "--free", "--label", label, "--pin", pin,
                               "--so-pin", so_pin], env=env, capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            out = (proc.stdout + proc.stderr).replace(pin, "***").replace(so_pin, "***")
            shutil.rmtree(self.dir, ignore_errors=True)
            raise RuntimeError(f"softhsm2-util --init-token failed ({proc.returncode}): {out.strip()}")
        self._saved_env = os.environ.get("SOFTHSM2_CONF")
        os.environ["SOFTHSM2_CONF"] = str(conf)
        self.target = Target(self.module, token_label=label, pin=pin)
        return self.target

    def __exit__(self, *exc) -> None:
        if self._saved_env is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = self._saved_env
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


