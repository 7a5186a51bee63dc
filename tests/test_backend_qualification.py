"""The backend qualification suite (conformance/backend) against SoftHSM, run as a user runs it.

Two nested pytest runs on throwaway SoftHSM tokens:
1. with the options SoftHSM 2.6.1 needs (harness.services.softhsm.SOFTHSM_P11_OPTIONS): all pass;
2. with Barbican's own defaults: it fails, naming CKM_AES_CBC_PAD / key_wrap_mechanism and the
   CKK_AES + CKM_SHA256_HMAC problem / hmac_key_type, each with the fix.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.qualify.module import default_module
from harness.services.softhsm import SOFTHSM_P11_OPTIONS

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300

pytestmark = [
    pytest.mark.integration,
    # Skipped on a machine without SoftHSM, never under CI=true (`./run` installs it).
    pytest.mark.skipif(default_module() is None and os.environ.get("CI", "").lower() != "true",
                       reason="SoftHSM (libsofthsm2.so) is not installed"),
]


def run_suite(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "SOFTHSM2_CONF")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "conformance/backend", "-p", "no:cacheprovider", "-q", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def summary(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else proc.stderr.strip()


def test_softhsm_options_pass(tmp_path):
    options = tmp_path / "softhsm-p11.ini"
    options.write_text("[p11_crypto_plugin]\n" + "".join(f"{k} = {v}\n" for k, v in SOFTHSM_P11_OPTIONS.items()))
    proc = run_suite(f"--p11-options={options}")
    last = summary(proc)
    assert proc.returncode == 0, f"exit {proc.returncode}: {last}\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    assert re.fullmatch(r"\d+ passed in [\d.]+s", last), f"expected only passes, got: {last}\n{proc.stdout[-4000:]}"
    assert int(last.split()[0]) >= 20, last


def test_barbican_defaults_fail_with_the_fix():
    proc = run_suite()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, f"expected test failures (exit 1), got exit {proc.returncode}:\n{out[-6000:]}"
    assert re.search(r"\d+ failed", summary(proc)), summary(proc)
    # Barbican's default key_wrap_mechanism = CKM_AES_CBC_PAD cannot wrap on SoftHSM 2.6.1 ...
    wrap = [ln for ln in out.splitlines() if ln.startswith("[keywrap.wrap]")]
    assert wrap, out[-6000:]
    assert "key_wrap_mechanism = CKM_AES_CBC_PAD" in wrap[0] and "CKR_MECHANISM_INVALID" in wrap[0], wrap[0]
    assert "set [p11_crypto_plugin] key_wrap_mechanism = CKM_AES_KEY_WRAP_PAD" in wrap[0], wrap[0]
    # ... and its default hmac_key_type = CKK_AES cannot sign CKM_SHA256_HMAC there.
    hmac = [ln for ln in out.splitlines() if ln.startswith("[hmac.sign_verify]")]
    assert hmac, out[-6000:]
    assert "hmac_key_type = CKK_AES" in hmac[0] and "CKM_SHA256_HMAC" in hmac[0], hmac[0]
    assert "hmac_key_type = CKK_GENERIC_SECRET" in hmac[0], hmac[0]
