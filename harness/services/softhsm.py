"""SoftHSM: one private token directory per environment, initialised with fresh PINs.
The MKEK and HMAC keys are made later with `barbican-manage hsm gen_mkek/gen_hmac`
(see barbican.py), as an operator would."""

from __future__ import annotations

from pathlib import Path

from harness.procs import run_command
from harness.services.base import Service, require_binary

SOFTHSM_LIB_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
)

# Options SoftHSM 2.6.1 needs (measured): it cannot wrap with Barbican's default
# CKM_AES_CBC_PAD, KEY_WRAP_PAD rejects an IV, and an AES key cannot sign SHA256-HMAC.
SOFTHSM_P11_OPTIONS = {
    "encryption_mechanism": "CKM_AES_CBC",
    "key_wrap_mechanism": "CKM_AES_KEY_WRAP_PAD",
    "key_wrap_generate_iv": "False",
    "hmac_key_type": "CKK_GENERIC_SECRET",
    "hmac_keygen_mechanism": "CKM_GENERIC_SECRET_KEY_GEN",
    "hmac_mechanism": "CKM_SHA256_HMAC",
    # Barbican serves several threads per process; SoftHSM must lock (measured races without).
    "os_locking_ok": "True",
}


def softhsm_library() -> str:
    for c in SOFTHSM_LIB_CANDIDATES:
        if Path(c).is_file():
            return c
    from harness.errors import MissingDependency

    raise MissingDependency("libsofthsm2.so", "softhsm2")


class SoftHSM(Service):
    name = "softhsm"

    def check(self) -> None:
        module = self.ctx.topology.hsm.module
        if module != "softhsm":
            from harness.errors import HarnessError

            raise HarnessError(f"hsm.module '{module}': environments make SoftHSM tokens only; "
                               "qualify a vendor module with `barbican-harness qualify-hsm`")
        self.util = require_binary("softhsm2-util", "softhsm2")
        self.library = softhsm_library()

    def library_or_default(self) -> str:
        """The module path before check() ran (check() raises if it is missing)."""
        try:
            return softhsm_library()
        except Exception:  # noqa: BLE001 - reported by check() with the package name
            return SOFTHSM_LIB_CANDIDATES[0]

    @property
    def dir(self) -> Path:
        return self.ctx.run_dir / "softhsm"

    @property
    def conf(self) -> Path:
        return self.dir / "softhsm2.conf"

    @property
    def tokens_dir(self) -> Path:
        return self.dir / "tokens"

    def env(self) -> dict:
        """What every process that opens the token needs in its environment."""
        return {"SOFTHSM2_CONF": str(self.conf)}

    def prepare(self) -> None:
        self.tokens_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ctx.render("softhsm2.conf.j2", self.conf, tokens_dir=self.tokens_dir)
        hsm = self.ctx.topology.hsm
        run_command([self.util, "--init-token", "--free", "--label", hsm.token_label,
                     "--pin", self.ctx.secrets.hsm_pin, "--so-pin", self.ctx.secrets.hsm_so_pin],
                    env=self.ctx.environ(**self.env()), log_path=self.log_path, timeout=60,
                    what="softhsm2-util --init-token")

    def start(self) -> None:
        """SoftHSM is a library loaded into Barbican: nothing runs on its own."""

    def wait_healthy(self, timeout: float = 0) -> None:
        pass

    def p11_options(self, library_path: str | None = None) -> dict[str, str]:
        hsm = self.ctx.topology.hsm
        options = {
            "library_path": library_path or self.library,
            "token_labels": hsm.token_label,
            "login": self.ctx.secrets.hsm_pin,
            "mkek_label": hsm.mkek_label,
            "mkek_length": "32",
            "hmac_label": hsm.hmac_label,
            "pkek_cache_ttl": str(hsm.pkek_cache_ttl),
            **SOFTHSM_P11_OPTIONS,
        }
        options.update(hsm.p11_options)
        return options
