"""SoftHSM: one private token directory per environment, initialised with fresh PINs.
The MKEK and HMAC keys are made later with `barbican-manage hsm gen_mkek/gen_hmac`
(see barbican.py), as an operator would.

With hsm.pin_env the environment uses an existing token instead (any PKCS#11 module, e.g.
for `qualify-hsm`): nothing is initialised, the PIN comes from that environment variable."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from harness import redact
from harness.procs import run_command
from harness.services.base import Service

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

# A fresh token through PKCS#11 itself (C_InitToken, then C_InitPIN as the SO), run as
# `python3 -c` on the host or in a container. softhsm2-util takes the PINs only on its
# command line (readable by every user in /proc/PID/cmdline while it runs) or from a
# terminal; here they come from the child's environment (/proc/PID/environ: its owner only).
INIT_TOKEN_SCRIPT = r"""
import ctypes, os, sys
U = ctypes.c_ulong
lib = ctypes.CDLL(os.environ["P11_INIT_MODULE"])
def call(name, *args):
    fn = getattr(lib, name)
    fn.restype = U
    rv = fn(*args)
    if rv:
        sys.exit("%s returned 0x%x" % (name, rv))
label = os.environ["P11_INIT_LABEL"].encode()[:32].ljust(32, b" ")
so_pin, pin = os.environ["P11_INIT_SO_PIN"].encode(), os.environ["P11_INIT_PIN"].encode()
call("C_Initialize", None)
count = U(0)
call("C_GetSlotList", ctypes.c_ubyte(1), None, ctypes.byref(count))
slots = (U * count.value)()
call("C_GetSlotList", ctypes.c_ubyte(1), slots, ctypes.byref(count))
info = ctypes.create_string_buffer(512)     # CK_TOKEN_INFO: flags follow 96 bytes of text
free = []
for slot in slots[:count.value]:
    call("C_GetTokenInfo", U(slot), info)
    if not U.from_buffer(info, 96).value & 0x400:   # CKF_TOKEN_INITIALIZED
        free.append(slot)
if not free:
    sys.exit("no slot with an uninitialised token")
slot = U(free[0])
call("C_InitToken", slot, so_pin, U(len(so_pin)), label)
session = U(0)
call("C_OpenSession", slot, U(0x6), None, None, ctypes.byref(session))   # CKF_RW_SESSION | CKF_SERIAL_SESSION
call("C_Login", session, U(0), so_pin, U(len(so_pin)))                     # CKU_SO
call("C_InitPIN", session, pin, U(len(pin)))
call("C_Logout", session)
call("C_CloseSession", session)
call("C_Finalize", None)
# SoftHSM gives an initialised token a slot ID of its own: find it by label and say it.
call("C_Initialize", None)
call("C_GetSlotList", ctypes.c_ubyte(1), None, ctypes.byref(count))
slots = (U * count.value)()
call("C_GetSlotList", ctypes.c_ubyte(1), slots, ctypes.byref(count))
found = [s for s in slots[:count.value] if call("C_GetTokenInfo", U(s), info) is None and info.raw[:32] == label]
call("C_Finalize", None)
print("token initialised in slot %d" % found[0] if found else "token initialised")
"""


def init_token_env(module: str, label: str, pin: str, so_pin: str) -> dict[str, str]:
    """INIT_TOKEN_SCRIPT's input: the module, the label and the PINs. It prints
    "token initialised in slot N" (the slot ID, as SoftHSM reassigns it)."""
    return {"P11_INIT_MODULE": module, "P11_INIT_LABEL": label, "P11_INIT_PIN": pin, "P11_INIT_SO_PIN": so_pin}


def softhsm_library() -> str:
    for c in SOFTHSM_LIB_CANDIDATES:
        if Path(c).is_file():
            return c
    from harness.errors import MissingDependency

    raise MissingDependency("libsofthsm2.so", "softhsm2")


class SoftHSM(Service):
    name = "softhsm"

    @property
    def existing_token(self) -> bool:
        """An existing token (hsm.pin_env), not one made for this environment."""
        return self.ctx.topology.hsm.pin_env is not None

    def check(self) -> None:
        from harness.errors import HarnessError

        hsm = self.ctx.topology.hsm
        if not self.existing_token:
            if hsm.module != "softhsm":
                raise HarnessError(f"hsm.module '{hsm.module}': environments make SoftHSM tokens only; "
                                   "for an existing token of another module set hsm.pin_env")
            self.library = softhsm_library()
            return
        self.library = softhsm_library() if hsm.module == "softhsm" else hsm.module
        if not Path(self.library).is_file():
            raise HarnessError(f"hsm.module: {self.library} does not exist")
        if hsm.softhsm_conf and not Path(hsm.softhsm_conf).is_file():
            raise HarnessError(f"hsm.softhsm_conf: {hsm.softhsm_conf} does not exist")
        pin = os.environ.get(hsm.pin_env or "")
        if not pin:
            raise HarnessError(f"hsm.pin_env: the environment variable {hsm.pin_env} is not set "
                               "(it must hold the token's user PIN)")
        # check() runs before Environment.up saves the run's secrets: the token's PIN takes the
        # generated one's place there (0600), so later processes (down, faults) log in with it.
        self.ctx.secrets.hsm_pin = pin
        redact.register(pin)

    _library: str | None = None

    @property
    def library(self) -> str:
        """The PKCS#11 module's path. check() sets it during `up`; a later command that
        attaches to the run (a fault, `down`) resolves it the same way here."""
        if self._library is None:
            hsm = self.ctx.topology.hsm
            self._library = softhsm_library() if hsm.module == "softhsm" else hsm.module
        return self._library

    @library.setter
    def library(self, path: str) -> None:
        self._library = path

    def library_or_default(self) -> str:
        """The module path before check() ran (check() raises if it is missing)."""
        if self.ctx.topology.hsm.module != "softhsm":
            return self.ctx.topology.hsm.module
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
        if self.existing_token:
            conf = self.ctx.topology.hsm.softhsm_conf
            return {"SOFTHSM2_CONF": conf} if conf else {}
        return {"SOFTHSM2_CONF": str(self.conf)}

    def prepare(self) -> None:
        if self.existing_token:
            return  # the token exists: nothing to initialise
        self.tokens_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ctx.render("softhsm2.conf.j2", self.conf, tokens_dir=self.tokens_dir)
        hsm = self.ctx.topology.hsm
        pins = init_token_env(self.library, hsm.token_label, self.ctx.secrets.hsm_pin, self.ctx.secrets.hsm_so_pin)
        run_command([sys.executable, "-c", INIT_TOKEN_SCRIPT], env=self.ctx.environ(**self.env(), **pins),
                    log_path=self.log_path, timeout=60, what="initialising the SoftHSM token (C_InitToken)")

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
