"""`qualify-hsm` on real SoftHSM 2.6.1 (harness/qualify/command.py).

(a) With the options SoftHSM needs (SOFTHSM_P11_OPTIONS) every requirement passes: backend
    qualification, Barbican with p11_crypto through the shim, the secret API, HSM calls per
    operation, throughput at 1/4/16 clients (2 s per level here, to bound the test), and the
    re-initialise-and-retry path for one CKR_DEVICE_ERROR / CKR_SESSION_COUNT.
(b) With Barbican's default key_wrap_mechanism it fails in the backend stage, naming
    CKM_AES_CBC_PAD and key_wrap_mechanism, and Barbican is never started.

The token is made here with softhsm2-util in a temporary directory; its PIN is handed over
in an environment variable and must not appear in any output or report.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.procs import is_running
from harness.qualify.command import QualifyConfig, qualify_hsm_command, run_qualification
from harness.qualify.module import default_module
from harness.services.softhsm import SOFTHSM_P11_OPTIONS

PIN_VAR = "QUALIFY_HSM_TEST_PIN"
LABEL = "qualify-test"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.xdist_group("qualify"),
    # Skipped on a machine without SoftHSM, never under CI=true (`./run` installs it).
    pytest.mark.skipif((default_module() is None or shutil.which("softhsm2-util") is None)
                       and os.environ.get("CI", "").lower() != "true",
                       reason="SoftHSM (libsofthsm2.so, softhsm2-util) is not installed"),
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
    proc = subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", LABEL, "--pin", pin,
                           "--so-pin", so_pin], env={"SOFTHSM2_CONF": str(conf), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.replace(pin, "***").replace(so_pin, "***")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    monkeypatch.setenv(PIN_VAR, pin)
    return pin


def options_file(tmp_path: Path, options: dict[str, str]) -> str:
    path = tmp_path / "p11.ini"
    path.write_text("[p11_crypto_plugin]\n" + "".join(f"{k} = {v}\n" for k, v in options.items()))
    return str(path)


def test_passes_on_softhsm_with_the_softhsm_options(token, tmp_path):
    cfg = QualifyConfig(module=default_module(), token_label=LABEL, pin_env=PIN_VAR,
                        options_file=options_file(tmp_path, SOFTHSM_P11_OPTIONS),
                        seconds=2, calls_n=10, api_k="secret and create_and_read_back", api_timeout=300,
                        log=lambda s: None)
    report, code = run_qualification(cfg)
    failed = [r for r in report["requirements"] if not r["passed"]]
    assert code == 0 and report["passed"], f"failed: {json.dumps(failed, indent=1)}\nnotes: {report['notes']}"
    names = {r["requirement"] for r in report["requirements"]}
    assert {"keywrap.wrap", "keywrap.unwrap", "sessions.concurrent", "barbican.up", "api.secret.delete",
            "api.order.key", "api.conformance", "hsm.store", "hsm.get", "load.no_errors"} <= names
    assert {n for n in names if n.startswith("api.secret.")} >= {
        f"api.secret.{t}" for t in ("symmetric/octet-stream", "opaque/text-plain", "passphrase/text-plain",
                                    "private/der-pkcs8", "public/pem-text-plain", "certificate/der-octet-stream")}
    reinit = {r["requirement"]: r["detail"] for r in report["requirements"] if r["stage"] == "reinit"}
    assert "Reinitializing PKCS#11 library: HSM returned response code: 0x30 CKR_DEVICE_ERROR" in \
        reinit["reinit.device_error.get"]
    assert "Reinitializing PKCS#11 library: HSM returned response code: 0xb1 CKR_SESSION_COUNT" in \
        reinit["reinit.session_count.store"]
    assert len(reinit) == 4

    # throughput: store and get at 1, 4 and 16 clients, without errors
    load = {(x["op"], x["clients"]): x for x in report["throughput"]}
    assert set(load) == {(op, n) for op in ("store", "get") for n in (1, 4, 16)}
    assert all(x["ok"] > 0 and x["errors"] == 0 and x["p95_ms"] is not None for x in load.values())

    # HSM calls per operation, from the shim: one C_Encrypt per store, one C_Decrypt per get
    calls = report["hsm_calls_per_operation"]
    assert calls["store"]["calls"]["C_Encrypt"] == 1 and calls["get"]["calls"]["C_Decrypt"] == 1
    assert calls["delete"]["total"] == 0
    assert calls["store_first_in_project"]["calls"].get("C_GenerateKey") == 1

    # the block that worked: exactly the qualified options, PIN masked
    block = report["barbican"]["p11_crypto_plugin"]
    assert block["login"] == "***" and block["library_path"] == default_module()
    assert {k: block[k] for k in SOFTHSM_P11_OPTIONS} == SOFTHSM_P11_OPTIONS
    assert report["barbican"]["environment_down"] is True
    assert any("destroyed this run's 2 key objects" in n for n in report["notes"]), report["notes"]

    # files written, PIN nowhere, nothing left running
    run_dir = Path(report["run_dir"])
    for name in ("qualification.json", "qualification.md"):
        text = (run_dir / name).read_text()
        assert token not in text
    assert json.loads((run_dir / "qualification.json").read_text())["result"] == "PASS"
    assert (run_dir / "qualification.md").read_text().startswith(
        "# HSM qualification for Barbican's p11_crypto plugin: PASS")
    assert "login = ***" in (run_dir / "qualification.md").read_text()
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "down"
    assert not [p["name"] for p in state["processes"] if is_running(p["pid"], p.get("create_time"))]


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
