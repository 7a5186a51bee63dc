"""The SoftHSM token on a named volume shared by the Barbican containers, and the
PKCS#11 fault shim compiled in the python image."""

from __future__ import annotations

import os
from pathlib import Path

from harness import shim
from harness.errors import HarnessError
from harness.providers.docker.containers import Runtime, container_name
from harness.services.hsm_shim import HsmShim

SOFTHSM_LIB = "/usr/lib/softhsm/libsofthsm2.so"  # in the python image
SHIM_LIB = "/usr/local/lib/libp11shim.so"        # compiled in the python image
TOKENS_DIR = "/var/lib/softhsm/tokens"            # the token volume, in containers


class DockerSoftHSM:
    """The SoftHSM token of the environment: on a named volume mounted by every Barbican
    container, initialised by a one-shot container with fresh PINs.

    For tools run on this machine (pkcs11-tool in tests, the hsm_key_deleted fault),
    `library`, `env()` and `tokens_dir` give the host's view: the host's libsofthsm2
    (when installed) on the volume's directory (a daemon on this machine, root)."""

    name = "softhsm"

    def __init__(self, rt: Runtime):
        from harness.services.softhsm import SoftHSM

        self.rt = rt
        self.ctx = rt.ctx
        self._local = SoftHSM(self.ctx)  # p11_options (PINs, labels, SoftHSM-safe mechanisms)
        self._local.library = SOFTHSM_LIB
        self.container_library = SOFTHSM_LIB

    @property
    def volume_name(self) -> str:
        return container_name(self.ctx.run_id, "softhsm-tokens")

    def volumes(self) -> dict:
        return {self.volume_name: {"bind": TOKENS_DIR, "mode": "rw"}}

    @property
    def dir(self) -> Path:
        return self.ctx.run_dir / "softhsm"

    @property
    def conf(self) -> Path:
        """The config containers use (tokens on the volume)."""
        return self.dir / "softhsm2.conf"

    @property
    def host_conf(self) -> Path:
        return self.dir / "softhsm2-host.conf"

    @property
    def tokens_dir(self) -> Path:
        vol = self.rt.volume("softhsm-tokens")
        mountpoint = vol.attrs.get("Mountpoint")
        if not mountpoint or not os.access(mountpoint, os.R_OK):
            raise HarnessError(f"the SoftHSM token volume {self.volume_name} is not readable from this "
                               f"machine ({mountpoint}); run as root against a local daemon")
        return Path(mountpoint)

    @property
    def library(self) -> str:
        from harness.services.softhsm import SOFTHSM_LIB_CANDIDATES

        for c in SOFTHSM_LIB_CANDIDATES:
            if Path(c).is_file():
                return c
        return SOFTHSM_LIB

    def container_env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf)}

    def env(self) -> dict[str, str]:
        """For host tools: a config pointing at the volume's directory."""
        self.ctx.render("softhsm2.conf.j2", self.host_conf, tokens_dir=self.tokens_dir)
        return {"SOFTHSM2_CONF": str(self.host_conf)}

    def check(self) -> None:
        hsm = self.ctx.topology.hsm
        # An existing token (pin_env) lives on the host, outside any container: refuse it
        # rather than quietly making a fresh SoftHSM token in its place.
        if hsm.module != "softhsm" or hsm.pin_env is not None:
            raise HarnessError(f"hsm: the docker provider makes fresh SoftHSM tokens only (module '{hsm.module}'"
                               f"{', pin_env ' + hsm.pin_env if hsm.pin_env else ''}); "
                               "use the local provider for an existing token")

    def prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rt.volume("softhsm-tokens")
        self.ctx.render("softhsm2.conf.j2", self.conf, tokens_dir=TOKENS_DIR)
        from harness.services.softhsm import INIT_TOKEN_SCRIPT, init_token_env

        hsm = self.ctx.topology.hsm
        # PINs through the environment, never a command line: the container's processes are
        # in the host's process list, and docker inspect shows Cmd.
        self.rt.one_shot("softhsm-init", self.rt.images["python"], ["python3", "-c", INIT_TOKEN_SCRIPT],
                         env={**self.container_env(),
                              **init_token_env(self.container_library, hsm.token_label, self.ctx.secrets.hsm_pin,
                                             self.ctx.secrets.hsm_so_pin)},
                         volumes=self.volumes(), what="initialising the SoftHSM token (C_InitToken)", timeout=120)

    def p11_options(self, library_path: str | None = None) -> dict[str, str]:
        return self._local.p11_options(library_path or self.container_library)


class DockerShim(HsmShim):
    """The PKCS#11 fault shim compiled in the python image. Its control file and stats
    directory are in the run directory (mounted: the directory, so that the atomic
    rename of the control file is seen); each container writes its stats to its own
    subdirectory (PID namespaces overlap)."""

    library_path = SHIM_LIB  # in the containers, not on this machine

    def __init__(self, rt: Runtime, real_module: str = SOFTHSM_LIB):
        super().__init__(rt.ctx, real_module)

    def check(self) -> None:
        pass  # built with the python image

    def env_for(self, container: str) -> dict[str, str]:
        stats = self.stats_dir / container
        stats.mkdir(parents=True, exist_ok=True)
        # The run directory is mounted at the same path in every container, so one lock
        # file serialises SoftHSM's token store across the containers (see harness.shim).
        return shim.env(self.real_module, self.control_path, stats, self.store_lock)
