"""SoftHSM 2 (Debian softhsm2): a library and a token directory, no daemon.

The worked example of a provisioner: the module is configured by one file named in
SOFTHSM2_CONF (read at C_Initialize), the token lives in the directory that file names,
and a fresh token is made through PKCS#11 itself on SoftHSM's free slot."""

from __future__ import annotations

from pathlib import Path

from harness.errors import MissingDependency
from harness.qualify.provision.base import ModuleUnavailable, Provisioner
from harness.services.softhsm import softhsm_library


class SoftHSMProvisioner(Provisioner):
    name = "softhsm"
    title = "SoftHSM 2.6.1"
    packages = ("softhsm2",)

    def library(self) -> str:
        try:
            return softhsm_library()
        except MissingDependency as exc:
            raise ModuleUnavailable(str(exc)) from None

    @property
    def conf(self) -> Path:
        return self.workdir / "softhsm2.conf"

    def start(self) -> None:
        tokens = self.workdir / "tokens"
        tokens.mkdir(mode=0o700, exist_ok=True)
        self.conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                             "log.level = ERROR\nslots.removable = false\n")

    def env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf)}

    def facts(self) -> list[str]:
        return ["no daemon; its own SOFTHSM2_CONF and token directory per run"]
