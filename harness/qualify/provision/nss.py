"""NSS softoken (libsoftokn3.so from Debian libnss3): Mozilla's software token.

The token is an NSS database made with certutil (its password is the user PIN, handed over
in a 0600 file that is removed at once, never on the command line). NSS's softoken needs
C_Initialize arguments Barbican never passes: the database directory and prefixes as a
string in CK_C_INITIALIZE_ARGS.pReserved. `diagnose()` measures, in a child process, what
happens when the module is initialised the way Barbican does it and the way NSS wants it.
"""

from __future__ import annotations

import shutil
import sys
from typing import Any

from harness.procs import CommandError, run
from harness.qualify.provision.base import ModuleUnavailable, Provisioner, Token
from harness.qualify.workers import call_worker, serve

LIBRARY = "/usr/lib/x86_64-linux-gnu/libsoftokn3.so"
KEY_SLOT_LABEL = "NSS Certificate DB"      # the token that holds keys and takes the PIN


def init_string(dbdir: str) -> str:
    """The pReserved string NSS's softoken wants (what NSS_Initialize passes it)."""
    return f"configdir='sql:{dbdir}' certPrefix='' keyPrefix='' secmod='secmod.db' flags="


class NssProvisioner(Provisioner):
    name = "nss"
    title = "NSS softoken 3.87"
    packages = ("libnss3", "libnss3-tools")

    def library(self) -> str:
        return LIBRARY

    def check(self) -> None:
        super().check()
        if not shutil.which("certutil"):
            raise ModuleUnavailable("certutil not found (Debian package libnss3-tools; ./run setup installs it)")

    @property
    def dbdir(self):
        return self.workdir / "nssdb"

    def init_token(self, label: str, so_pin: str, user_pin: str) -> Token:
        """An NSS database whose password is the user PIN. NSS names its key token itself
        ("NSS Certificate DB"): the label asked for cannot be set."""
        self.dbdir.mkdir(mode=0o700, exist_ok=True)
        pwfile = self.workdir / "pw"
        pwfile.touch(mode=0o600)
        pwfile.write_text(user_pin + "\n")
        try:
            run(["certutil", "-N", "-d", f"sql:{self.dbdir}", "-f", str(pwfile)], timeout=60,
                what="certutil -N (new NSS database)")
        except CommandError as exc:
            raise ModuleUnavailable(f"cannot make an NSS database: {exc}") from None
        finally:
            pwfile.unlink(missing_ok=True)
        return Token(LIBRARY, KEY_SLOT_LABEL, user_pin, None, self.env(),
                     {"manufacturer": "Mozilla Foundation", "model": "NSS 3", "label_asked": label})

    def diagnose(self, token: Token) -> list[str]:
        done = call_worker("harness.qualify.provision.nss", "diagnose",
                           {"dbdir": str(self.dbdir), "pin": token.pin}, timeout=120, secret=token.pin)
        if done.answer is None:
            return [f"the NSS diagnosis {done.why}"]
        return done.answer["findings"]

    def facts(self) -> list[str]:
        return ["no daemon; an NSS sql: database per run (certutil -N)"]


def _diagnose_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from harness.qualify.module import RawModule, rv_name

    raw = RawModule(LIBRARY)
    found = []
    rv = raw.initialize(os_locking_ok=False)
    found.append(f"C_Initialize(NULL), as Barbican calls it with os_locking_ok = False: {rv_name(rv)}")
    if rv == 0:
        raw.finalize()
    rv = raw.initialize(os_locking_ok=True)
    found.append(f"C_Initialize(CKF_OS_LOCKING_OK, pReserved NULL), as Barbican calls it with os_locking_ok = True: "
                 f"{rv_name(rv)}")
    if rv == 0:
        raw.finalize()
    rv = raw.initialize(os_locking_ok=True, reserved=init_string(spec["dbdir"]).encode())
    line = f"C_Initialize with NSS's pReserved string (configdir='sql:<the run's database>' ...): {rv_name(rv)}"
    if rv == 0:
        try:
            _, slots = raw.slots(True)
            labels = {s: raw.token_info(s)[1]["label"] for s in slots}
            key_slot = next((s for s, label in labels.items() if label == KEY_SLOT_LABEL), None)
            line += f"; tokens: {', '.join(repr(v) for v in labels.values())}"
            if key_slot is not None:
                rv, session = raw.open_session(key_slot)
                if rv == 0:
                    line += f"; C_Login(CKU_USER) on {KEY_SLOT_LABEL!r}: {rv_name(raw.login(session, spec['pin']))}"
                    raw.close_session(session)
        finally:
            raw.finalize()
    found.append(line)
    found.append("Barbican's [p11_crypto_plugin] has no option for C_Initialize's pReserved, so it cannot "
                 "initialise NSS's softoken")
    return {"findings": found}


if __name__ == "__main__":
    sys.exit(serve({"diagnose": _diagnose_worker}, "harness.qualify.provision.nss"))
