"""`qualify-hsm` on real SoftHSM 2.6.1 (harness/qualify/command.py), as a vendor runs it on
their own token: with Barbican's default key_wrap_mechanism it fails in the backend stage,
naming CKM_AES_CBC_PAD and key_wrap_mechanism, and Barbican is never started. (The passing
run end to end on SoftHSM, with the same code path and a token given by label and PIN
variable, is tests/test_qualify_matrix.py.)

The token is made here through PKCS#11 (harness.services.softhsm) in a temporary directory; its PIN is handed over
in an environment variable and must not appear in any output or report.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import subprocess
from pathlib import Path

import pytest

from harness.qualify.command import qualify_hsm_command
from harness.qualify.module import default_module
from harness.services.softhsm import INIT_TOKEN_SCRIPT, SOFTHSM_P11_OPTIONS, init_token_env

PIN_VAR = "QUALIFY_HSM_TEST_PIN"
LABEL = "qualify-test"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.xdist_group("qualify"),
    # Skipped on a machine without SoftHSM, never under CI=true (`./run` installs it).
    pytest.mark.skipif(default_module() is None and os.environ.get("CI", "").lower() != "true",
                       reason="SoftHSM (libsofthsm2.so) is not installed"),
]


@pytest.fixture
def token(tmp_path, monkeypatch) -> str:
    """A fresh SoftHSM token (own SOFTHSM2_CONF); its user PIN in $QUALIFY_HSM_TEST_PIN."""
    tokens = tmp_path / "tokens"
    tokens.mkdir(mode=0o700)
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
                    "slots.removable = false\n")
    pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
    # As the harness initialises its environments' tokens: PINs in the child's environment,
    # never on its command line.
    init_env = init_token_env(default_module(), LABEL, pin, so_pin)
    proc = subprocess.run([sys.executable, "-c", INIT_TOKEN_SCRIPT],
                          env={"SOFTHSM2_CONF": str(conf), "PATH": "/usr/bin:/bin", **init_env},
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.replace(pin, "***").replace(so_pin, "***")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    monkeypatch.setenv(PIN_VAR, pin)
    return pin


def options_file(tmp_path: Path, options: dict[str, str]) -> str:
    path = tmp_path / "p11.ini"
    path.write_text("[p11_crypto_plugin]\n" + "".join(f"{k} = {v}\n" for k, v in options.items()))
    return str(path)


def test_fails_early_with_barbicans_default_key_wrap_mechanism(token, tmp_path, capsys):
    options = {k: v for k, v in SOFTHSM_P11_OPTIONS.items() if not k.startswith("key_wrap_")}
    code = qualify_hsm_command(default_module(), LABEL, PIN_VAR, options_file(tmp_path, options), json_out=True)
    captured = capsys.readouterr()
    assert code == 1, captured.out[-3000:] + captured.err[-3000:]
    report = json.loads(captured.out)
    assert token not in captured.out + captured.err

    failed = [r for r in report["requirements"] if not r["passed"]]
    wrap = [r for r in failed if r["requirement"] == "keywrap.wrap"]
    assert wrap, failed
    assert wrap[0]["option"] == "key_wrap_mechanism" and wrap[0]["mechanism"] == "CKM_AES_CBC_PAD"
    assert "CKM_AES_KEY_WRAP_PAD" in wrap[0]["hint"]
    assert all(r["stage"] == "backend" for r in report["requirements"])
    assert "CKM_AES_CBC_PAD" in captured.err and "key_wrap_mechanism" in captured.err

    # Barbican was never started: no environment state, only the report in the run directory
    assert report["not_run"] == ["barbican", "api", "hsm", "load", "reinit"]
    assert "barbican" not in report
    run_dir = Path(report["run_dir"])
    assert sorted(p.name for p in run_dir.iterdir()) == ["qualification.json", "qualification.md"]
    md = (run_dir / "qualification.md").read_text()
    assert "FAIL" in md and "CKM_AES_CBC_PAD" in md and "key_wrap_mechanism" in md
