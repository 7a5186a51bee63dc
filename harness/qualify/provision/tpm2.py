"""tpm2-pkcs11 1.9 on a software TPM (swtpm 0.7), through the TPM2 access broker (tpm2-abrmd).

Per run: swtpm with its own state directory on two free ports, a private D-Bus session bus
(dbus-daemon with a socket of its own), tpm2-abrmd on that bus under a unique name, and a
tpm2-pkcs11 store directory (sqlite). Nothing is machine-wide.

Why the broker and not the direct TCTI to swtpm's socket: Barbican runs several processes on
the token (API nodes, barbican-manage, the checks), and every one loads the token's keys and
starts TPM sessions. Without a resource manager the TPM's few session and object slots run
out (measured here with TPM2_PKCS11_TCTI=swtpm:...: of 5 processes logging in at once, the
4th and 5th failed with "tpm:warn(2.0): out of memory for session contexts", which reaches
the application as CKR_GENERAL_ERROR). tpm2-abrmd swaps contexts in and out per client.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

from harness.ports import free_port, port_is_free, wait_port_open
from harness.procs import CommandError, run
from harness.qualify.provision.base import ModuleUnavailable, Provisioner
from harness.wait import WaitTimeout, wait_until

LIBRARY = "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so"
TCTI_TABRMD = "/usr/lib/x86_64-linux-gnu/libtss2-tcti-tabrmd.so.0"
BINARIES = {"swtpm": "swtpm", "dbus-daemon": "dbus", "tpm2-abrmd": "tpm2-abrmd", "tpm2_getrandom": "tpm2-tools"}


def _port_pair() -> tuple[int, int]:
    """Two free ports N, N+1: the swtpm TCTI finds the control channel at its port + 1."""
    for _ in range(50):
        port = free_port()
        if port < 65535 and port_is_free(port + 1):
            return port, port + 1
    raise ModuleUnavailable("no two adjacent free ports on 127.0.0.1 for swtpm")


class Tpm2Provisioner(Provisioner):
    name = "tpm2"
    title = "tpm2-pkcs11 1.9 on swtpm 0.7"
    packages = ("libtpm2-pkcs11-1", "swtpm", "tpm2-abrmd", "libtss2-tcti-tabrmd0", "tpm2-tools", "dbus")
    init_timeout = 180.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bus_dir: Path | None = None
        self._env: dict[str, str] = {}

    def library(self) -> str:
        return LIBRARY

    def check(self) -> None:
        super().check()
        for binary, package in BINARIES.items():
            if not shutil.which(binary):
                raise ModuleUnavailable(f"{binary} not found (Debian package {package}; ./run setup installs it)")
        if not Path(TCTI_TABRMD).is_file():
            raise ModuleUnavailable(f"{TCTI_TABRMD} not found (Debian package libtss2-tcti-tabrmd0)")

    def start(self) -> None:
        state, store = self.workdir / "tpm-state", self.workdir / "store"
        state.mkdir(mode=0o700, exist_ok=True)
        store.mkdir(mode=0o700, exist_ok=True)
        port, ctrl = _port_pair()
        swtpm = self.daemon("swtpm", ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
                                      "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                                      "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
                                      "--flags", "not-need-init,startup-clear"])
        if not wait_port_open(port, timeout=30):
            raise ModuleUnavailable(f"swtpm did not listen on 127.0.0.1:{port}: {swtpm.log_tail()}")
        # A unix socket path must fit in 108 bytes: the bus lives in a short directory of its own.
        self.bus_dir = Path(tempfile.mkdtemp(prefix="bh-tpm2-"))
        bus = f"unix:path={self.bus_dir / 'bus'}"
        dbus = self.daemon("dbus-daemon", ["dbus-daemon", "--session", "--nofork", f"--address={bus}"])
        name = f"com.intel.tss2.Tabrmd.q{secrets.token_hex(4)}"
        abrmd = ["tpm2-abrmd", "--session", f"--dbus-name={name}", f"--tcti=swtpm:host=127.0.0.1,port={port}",
                 "--flush-all"] + (["--allow-root"] if os.geteuid() == 0 else [])
        self._env = {"DBUS_SESSION_BUS_ADDRESS": bus, "TPM2_PKCS11_STORE": str(store),
                     "TPM2_PKCS11_TCTI": f"tabrmd:bus_name={name},bus_type=session",
                     "TPM2TOOLS_TCTI": f"tabrmd:bus_name={name},bus_type=session",
                     # errors only: its warnings ("Cannot prepare version query ...") are noise
                     "TPM2_PKCS11_LOG_LEVEL": "0"}
        try:
            wait_until(lambda: (self.bus_dir / "bus").exists(), timeout=20, what="dbus-daemon opens the bus",
                       gave_up=lambda: None if dbus.alive() else "dbus-daemon exited", log=dbus.log_tail)
            broker = self.daemon("tpm2-abrmd", abrmd, env=self._env)
            wait_until(self._tpm_answers, timeout=30, what=f"tpm2-abrmd answers as {name}",
                       gave_up=lambda: None if broker.alive() else "tpm2-abrmd exited", log=broker.log_tail)
        except WaitTimeout as exc:
            raise ModuleUnavailable(str(exc)) from None

    def _tpm_answers(self) -> bool:
        try:
            run(["tpm2_getrandom", "8"], timeout=10, what="tpm2_getrandom", env={**os.environ, **self._env})
            return True
        except CommandError:
            return False

    def env(self) -> dict[str, str]:
        return dict(self._env)

    def teardown(self) -> None:
        if self.bus_dir is not None:
            shutil.rmtree(self.bus_dir, ignore_errors=True)
        super().teardown()

    def facts(self) -> list[str]:
        return ["swtpm (own state, free ports) + dbus-daemon (private session bus) + tpm2-abrmd per run; "
                "the direct swtpm TCTI runs out of TPM session contexts with several processes"]
