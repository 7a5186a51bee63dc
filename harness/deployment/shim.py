"""The PKCS#11 fault shim in a deployment's Barbican containers: a reversible install
step, and the shim's control (capability hsm_shim) through the Docker API.

    barbican-harness shim install --deployment FILE      (once, before HSM faults)
    barbican-harness shim uninstall --deployment FILE    (when done)

Install, one Barbican container at a time (the others keep serving):
  1. copy the harness's compiled shim into the container, /var/lib/barbican-harness/p11shim.so,
     with its settings next to it (p11shim.so.conf: the real module, the control file, the
     statistics directory): a running container's environment cannot be changed, and the
     shim reads that file when P11SHIM_MODULE is not in its environment;
  2. point [p11_crypto_plugin] library_path at the shim (the original barbican.conf is kept
     0600 in the state directory; the real module is recorded in changes.json);
  3. restart the container and wait until it serves.
Uninstall writes the original barbican.conf back byte-identical (checked by hash),
restarts, and removes the shim's files. Until then HSM faults (hsm_latency, hsm_error ...)
set rules in every container's control file (replaced atomically with a rename) and read
the call statistics back (harness.shim.ShimControl on a copy in the state directory).

The shim is built for the harness's machine (x86_64 glibc, C only, no libpython): a
container of another architecture or a libc other than glibc cannot load it.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path, PurePosixPath

from harness import shim as shim_lib
from harness.deployment.docker_hosts import FileInContainer, read_file, to_undo, write_file
from harness.deployment.facets import Readiness, _start_again, sha256
from harness.deployment.ini import IniFile, option
from harness.errors import HarnessError

DIR = "/var/lib/barbican-harness"
LIBRARY = f"{DIR}/p11shim.so"
CONTROL = f"{DIR}/control"
STATS = f"{DIR}/stats"
KIND = "shim"  # its record in changes.json


def _settings(real_module: str) -> str:
    lock = shim_lib.store_lock_for(real_module, PurePosixPath(CONTROL))
    env = shim_lib.env(real_module, CONTROL, STATS, lock)
    return "# the PKCS#11 fault shim's settings, written by barbican-harness shim install\n" + \
        "".join(f"{k}={v}\n" for k, v in env.items())


def _tar(entries: list[tuple[str, bytes | None, int]], uid: int, gid: int) -> bytes:
    """A tar of directories (data None) and files, owned by uid:gid."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data, mode in entries:
            info = tarfile.TarInfo(path.lstrip("/"))
            info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, int(time.time())
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _p11_library(conf: bytes, where: str) -> str:
    paths = option(conf.decode(errors="replace"), "p11_crypto_plugin", "library_path")
    if not paths:
        raise HarnessError(f"{where} has no [p11_crypto_plugin] library_path: Barbican there does not use "
                           "a PKCS#11 module, there is nothing to put the shim in front of")
    return paths[-1]


def installed(target) -> dict[str, dict]:
    """Barbican containers with the shim installed: role -> its record."""
    return {role: kinds[KIND] for role, kinds in target.changes.all().items() if KIND in kinds}


def missing_reason(target) -> str | None:
    """Why the deployment has no hsm_shim capability, or None when it has."""
    roles = list(target.deployment.barbican())
    have = installed(target)
    missing = [r for r in roles if r not in have]
    if not missing:
        return None
    return (f"the PKCS#11 fault shim is not installed in {', '.join(missing)} "
            f"(barbican-harness shim install --deployment {target.deployment.path})")


def install(target, say=print) -> list[str]:
    """Install the shim in every Barbican container that has not got it (idempotent)."""
    done = []
    have = installed(target)
    library = Path(shim_lib.library_path()).read_bytes()
    for role in target.deployment.barbican():
        if role in have:
            say(f"{role}: the shim is installed already (real module {have[role]['real_module']})")
            continue
        box = target.containers.box(role)
        c = target.containers.get(role)
        path = target.deployment.config_path(role)
        original = target.containers.call(role, f"read {path} from", lambda: read_file(c, path))
        real = _p11_library(original.data, f"{path} in {box.container}")
        if real == LIBRARY:
            raise HarnessError(f"{role}: {path} already loads {LIBRARY}, but the harness has no record of installing "
                               "it (another state directory?): not touched")
        expected = target.deployment.pkcs11_module(role)
        if expected and expected != real:
            raise HarnessError(f"{role}: {path} loads {real}, the deployment file says pkcs11_module {expected}")
        saved_dir = target.run_dir / "shim-originals"
        saved_dir.mkdir(mode=0o700, exist_ok=True)
        saved = saved_dir / f"{role}.conf"
        fd = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(original.data)
        ini = IniFile(original.data.decode())
        ini.set("p11_crypto_plugin", "library_path", [LIBRARY])
        edited = ini.render().encode()
        target.changes.record(role, KIND, box, c.id, config=path, real_module=real, saved=str(saved),
                              sha256=sha256(original.data), installed_sha256=sha256(edited),
                              owner=[original.uid, original.gid, original.uname, original.gname], mode=original.mode)
        # Readable by Barbican's user; the statistics directory writable by it.
        files = [(DIR, None, 0o755), (STATS, None, 0o755), (LIBRARY, library, 0o755),
                 (LIBRARY + ".conf", _settings(real).encode(), 0o644), (CONTROL, b"", 0o644)]
        target.containers.call(role, "copy the shim into", lambda: c.put_archive("/", _tar(files, original.uid,
                                                                                         original.gid)))
        target.containers.call(role, f"write {path} in", lambda: write_file(c, path, edited, original))
        _start_again(target.containers, role, c)
        Readiness(target).wait(role, c)
        say(f"{role}: shim installed in {box.container} in front of {real}; restarted and serving")
        done.append(role)
    return done


def uninstall(target, say=print) -> list[str]:
    """Put every container's barbican.conf back as it was before the install, restart,
    and remove the shim's files."""
    done = []
    for role, entry in installed(target).items():
        c, _ = to_undo(target.containers, target.changes, role, KIND)
        if c is None:
            say(f"{role}: container {entry['container']} is gone or was recreated since the install: "
                f"nothing to undo there (its original config stays in {entry['saved']})")
            continue
        data = Path(entry["saved"]).read_bytes()
        if sha256(data) != entry["sha256"]:
            raise HarnessError(f"{entry['saved']}: does not match the recorded sha256; {role} left as it is")
        uid, gid, uname, gname = entry["owner"]
        original = FileInContainer(data, entry["mode"], uid, gid, uname, gname)
        current = read_file(c, entry["config"]).data
        if sha256(current) == entry["installed_sha256"]:
            restored = data
        else:  # changed since the install (by an operator?): only the module path goes back
            ini = IniFile(current.decode())
            ini.set("p11_crypto_plugin", "library_path", [entry["real_module"]])
            restored = ini.render().encode()
            say(f"{role}: {entry['config']} changed since the install: only library_path is put back")
        target.containers.call(role, f"write {entry['config']} in",
                               lambda: write_file(c, entry["config"], restored, original))
        _start_again(target.containers, role, c)
        Readiness(target).wait(role, c)
        target.containers.call(role, "remove the shim from", lambda: c.exec_run(["rm", "-rf", DIR]))
        if sha256(read_file(c, entry["config"]).data) != sha256(restored):
            raise HarnessError(f"{role}: {entry['config']} does not read back as written")
        target.changes.drop(role, KIND)
        Path(entry["saved"]).unlink(missing_ok=True)
        say(f"{role}: shim removed from {entry['container']}; {entry['config']} "
            f"{'byte-identical to before the install' if restored == data else 'loads the real module again'}; "
            "restarted and serving")
        done.append(role)
    return done


class ContainerShimControl:
    """Capability.HSM_SHIM (harness.target.HsmShimControl) for the shims in the containers:
    the rules are kept in <state>/shim/control and copied into every container; the
    statistics are copied out into <state>/shim/stats/<role>/ before they are read."""

    def __init__(self, target):
        self.target = target
        self.local = shim_lib.ShimControl(target.run_dir / "shim" / "control", target.run_dir / "shim" / "stats")

    def rules(self) -> list:
        return self.local.rules()

    def set_rules(self, rules: list, settle: bool = True) -> None:
        self.local.set_rules(rules, settle=False)
        body = self.local.control_path.read_bytes()
        for role in installed(self.target):
            self._push(role, body)
        if settle:
            time.sleep(2 * shim_lib.RELOAD_INTERVAL_S)

    def _push(self, role: str, body: bytes) -> None:
        c = self.target.containers.get(role)
        like = FileInContainer(body, 0o644, 0, 0, "root", "root")
        tmp = f"{CONTROL}.new"
        self.target.containers.call(role, "write the shim's rules in", lambda: write_file(c, tmp, body, like))
        # A rename: the shim sees a new file at once, never a half-written one.
        rc, out = self.target.containers.call(role, "install the shim's rules in",
                                              lambda: c.exec_run(["mv", "-f", tmp, CONTROL]))
        if rc != 0:
            raise HarnessError(f"{role}: mv {tmp} {CONTROL} in {c.name} failed: {out.decode(errors='replace')}")

    def clear(self, settle: bool = True) -> None:
        self.set_rules([], settle=settle)

    def _pull(self) -> None:
        for role in installed(self.target):
            c = self.target.containers.get(role)
            stream, _ = self.target.containers.call(role, "read the shim's statistics from",
                                                    lambda: c.get_archive(STATS + "/."))
            dest = self.local.stats_dir / role
            dest.mkdir(parents=True, exist_ok=True)
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                for member in tar.getmembers():
                    name = PurePosixPath(member.name).name
                    if member.isfile() and name.endswith(".stats"):
                        (dest / name).write_bytes(tar.extractfile(member).read())

    def stats(self) -> dict:
        self._pull()
        return self.local.stats()

    def reset_stats(self) -> None:
        self._pull()
        self.local.reset_stats()


def plan(target, step: str):
    """--dry-run of install / uninstall: what each container would go through."""
    from harness.plan import Plan

    p = Plan(f"shim {step} on {target.name}")
    have = installed(target)
    for role in target.deployment.barbican():
        box = target.containers.box(role)
        path = target.deployment.config_path(role)
        if step == "install" and role not in have:
            p.add(f"{role} ({box.container} on {box.host}): copy the shim to {LIBRARY} with its settings, keep "
                  f"{path} (0600, in {target.run_dir}), set [p11_crypto_plugin] library_path = {LIBRARY}, "
                  "restart, wait until it serves")
        elif step == "uninstall" and role in have:
            p.add(f"{role} ({box.container}): write the kept {path} back (checked by sha256), restart, "
                  f"wait until it serves, remove {DIR}")
        else:
            p.add(f"{role} ({box.container}): nothing to do")
    return p
