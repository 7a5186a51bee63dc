"""opencryptoki 3.8 with its soft token (Debian opencryptoki): a library, a slot daemon
(pkcsslotd) and a token directory.

opencryptoki 3.8 cannot run per environment with its own configuration directory: its paths
are compiled in (read with `strings` from the Debian binaries and confirmed by running them):
the slot table /etc/opencryptoki/opencryptoki.conf, the daemon's socket
/var/run/pkcsslotd.socket, the soft token's store /var/lib/opencryptoki/swtok, lock files
in /var/lock/opencryptoki, and shared memory (SysV, keyed by ftok of the store path; POSIX
in /dev/shm). pkcsslotd takes only -v, -f, -l and -h; no environment variable moves them.
Run as Debian ships it, it is one machine-wide daemon with one soft token, which two runs
would share and re-initialise under each other.

So the harness gives each run private copies of those paths instead: the module's whole
qualification runs in its own mount and IPC namespaces (`unshare --mount --ipc`, which
needs root or CAP_SYS_ADMIN), where the run's directories are bind-mounted over
/etc/opencryptoki and /var/lib/opencryptoki, /run gets a private overlay (socket and lock
files) and /dev/shm a private tmpfs. Everything the run starts (pkcsslotd, the checks,
Barbican, barbican-manage) lives in that namespace and sees only its own token; the
machine's own files and any other run are untouched, and the mounts vanish with the last
process of the namespace. The provisioner refuses to mount anything unless its mount
namespace differs from its parent's.

A fresh soft token has the SO PIN 87654321 and PINs of 4 to 8 characters.
"""

from __future__ import annotations

import grp
import os
import shutil
from pathlib import Path

from harness.procs import CommandError, run
from harness.qualify.provision.base import ModuleUnavailable, Provisioner
from harness.wait import WaitTimeout, wait_until

LIBRARY = "/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so"
SLOT = 0
SOCKET = Path("/run/pkcsslotd.socket")
CONF_DIR, STORE_DIR = Path("/etc/opencryptoki"), Path("/var/lib/opencryptoki")


def in_private_mount_namespace() -> bool:
    try:
        return os.readlink("/proc/self/ns/mnt") != os.readlink(f"/proc/{os.getppid()}/ns/mnt")
    except OSError:
        return False


class OpencryptokiProvisioner(Provisioner):
    name = "opencryptoki"
    title = "opencryptoki 3.8 soft token"
    packages = ("opencryptoki",)
    isolation = ("unshare", "--mount", "--ipc", "--propagation", "private", "--")
    factory_so_pin = "87654321"

    def library(self) -> str:
        return LIBRARY

    def check(self) -> None:
        super().check()
        for binary in ("pkcsslotd", "mount", "unshare"):
            if not shutil.which(binary):
                raise ModuleUnavailable(f"{binary} not found (Debian: opencryptoki / util-linux)")
        try:
            grp.getgrnam("pkcs11")
        except KeyError:
            raise ModuleUnavailable("the group pkcs11 does not exist (the opencryptoki package creates it)") from None
        if not in_private_mount_namespace():
            raise ModuleUnavailable(
                "opencryptoki 3.8's paths are compiled in (/etc/opencryptoki, /var/lib/opencryptoki, "
                "/run/pkcsslotd.socket): its qualification must run in private mount and IPC namespaces "
                f"({' '.join(self.isolation[:-1])}, as `qualify-hsm matrix` starts it; needs root or "
                "CAP_SYS_ADMIN); refusing to mount over this machine's own")

    def _mount(self, *args: str) -> None:
        try:
            run(["mount", *args], timeout=30, what=f"mount {' '.join(args)}")
        except CommandError as exc:
            raise ModuleUnavailable(f"cannot give the run private opencryptoki paths: {exc}") from None

    def start(self) -> None:
        pkcs11_gid = grp.getgrnam("pkcs11").gr_gid
        etc, store, upper, work = (self.workdir / d for d in ("etc", "lib", "run-upper", "run-work"))
        for d in (etc, store / "swtok" / "TOK_OBJ", upper, work):
            d.mkdir(parents=True, exist_ok=True)
        for d in (store, store / "swtok", store / "swtok" / "TOK_OBJ"):
            os.chown(d, 0, pkcs11_gid)
            d.chmod(0o770)
        (etc / "opencryptoki.conf").write_text(
            f"version opencryptoki-3.1\n\nslot {SLOT}\n{{\nstdll = libpkcs11_sw.so\n}}\n")
        self._mount("--bind", str(etc), str(CONF_DIR))
        self._mount("--bind", str(store), str(STORE_DIR))
        self._mount("-t", "overlay", "overlay", "-o", f"lowerdir=/run,upperdir={upper},workdir={work}", "/run")
        self._mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", "/dev/shm")
        locks = Path("/run/lock/opencryptoki")
        for d in (locks, locks / "swtok"):
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, 0, pkcs11_gid)
            d.chmod(0o770)
        daemon = self.daemon("pkcsslotd", ["pkcsslotd", "-f"])
        try:
            wait_until(SOCKET.exists, timeout=30, what="pkcsslotd creates /run/pkcsslotd.socket",
                       gave_up=lambda: None if daemon.alive() else "pkcsslotd exited", log=daemon.log_tail)
        except WaitTimeout as exc:
            raise ModuleUnavailable(str(exc)) from None

    def token_slot(self) -> int | None:
        return SLOT

    def teardown(self) -> None:
        # The namespace takes its mounts along when its last process ends; unmount anyway, so
        # that nothing still points into the work directory once it is gone.
        for target in ("/dev/shm", "/run", str(STORE_DIR), str(CONF_DIR)):
            if in_private_mount_namespace():
                run(["umount", "--lazy", target], timeout=30, what=f"umount {target}", check=False)
        super().teardown()

    def facts(self) -> list[str]:
        return ["pkcsslotd (slot daemon) per run, in private mount and IPC namespaces: opencryptoki 3.8 has its "
                "configuration, socket and token paths compiled in, so it cannot be pointed at a per-run directory; "
                "without the namespaces it is one machine-wide daemon with one shared soft token"]
