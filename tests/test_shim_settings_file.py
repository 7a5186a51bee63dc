"""Issue 13: the PKCS#11 shim in a process whose environment the harness cannot set (a
container that is already running): with no P11SHIM_MODULE in the environment it reads
its settings from $P11SHIM_CONFIG, by default from the file next to itself."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from harness import shim
from harness.shim import Rule, ShimControl
from tests.test_shim import SOFTHSM, hsm, needs_softhsm  # noqa: F401 - hsm is a fixture

pytestmark = [pytest.mark.integration, needs_softhsm,
              pytest.mark.skipif(not shutil.which("pkcs11-tool"), reason="OpenSC pkcs11-tool not installed")]


def slots(library: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["pkcs11-tool", "--module", library, "-L"], env=env, capture_output=True, text=True,
                          timeout=60)


def test_settings_from_the_file_next_to_the_shim_and_from_p11shim_config(hsm, tmp_path):  # noqa: F811
    work, base, _ = hsm
    control = ShimControl(work / "control", work / "stats")
    env = {k: v for k, v in base.items() if not k.startswith("P11SHIM_")}
    settings = "".join(f"{k}={v}\n" for k, v in control.env(SOFTHSM).items())
    # Next to a copy of the shim: <shim>.conf.
    library = tmp_path / "p11shim.so"
    shutil.copy(shim.library_path(), library)
    (tmp_path / "p11shim.so.conf").write_text("# written by the harness\n" + settings)
    out = slots(str(library), env)
    assert out.returncode == 0 and re.search(r"token label\s*:\s*t\b", out.stdout), out.stderr
    control.set_rules([Rule(fn="C_GetSlotList", rv="CKR_DEVICE_ERROR")])
    out = slots(str(library), env)
    assert out.returncode != 0 and "CKR_DEVICE_ERROR" in out.stderr
    assert control.stats()["C_GetSlotList"]["injected"] == 1
    # Named by P11SHIM_CONFIG; the environment still wins when it names the module.
    named = tmp_path / "elsewhere.conf"
    named.write_text(settings)
    (tmp_path / "p11shim.so.conf").unlink()
    assert slots(str(library), {**env, "P11SHIM_CONFIG": str(named)}).returncode != 0  # the rule holds
    control.clear()
    assert slots(str(library), {**env, "P11SHIM_CONFIG": str(named)}).returncode == 0
    out = slots(str(library), env)
    assert out.returncode != 0 and "P11SHIM_MODULE is not set" in out.stderr
    assert slots(str(library), {**env, **control.env(SOFTHSM), "P11SHIM_CONFIG": os.devnull}).returncode == 0
