"""Kryoptic 1.5.4 (crates.io): a PKCS#11 soft token in Rust, built with cargo once per machine.

Build configuration, read from the crates before building: the `kryoptic` crate is only the
cdylib (`kryoptic_pkcs11`); its default features are `kryoptic-lib/default` = `standard`
(sqlite token store and every mechanism family) + `dynamic` (link the system OpenSSL,
found with pkg-config, >= 3.0.7; the alternative builds OpenSSL from sources). `standard`
includes `ecc_all` -> `eddsa` -> `ossl/ossl320`, i.e. OpenSSL 3.2 APIs, and Debian bookworm
ships OpenSSL 3.0. So the harness builds `--no-default-features --features
minimal,kryoptic-lib/dynamic`: sqlite store, AES (all modes and key wraps), SHA-2 and
HMAC, RSA, ECDSA/ECDH: everything Barbican's plugin can ask for. The build needs cargo,
bindgen's libclang, and the OpenSSL and SQLite headers (Debian: libclang-dev, libssl-dev,
libsqlite3-dev, pkg-config).

Cached in ~/.cache/barbican-harness/kryoptic-1.5.4/ (XDG_CACHE_HOME honoured): `./run setup`
builds it, or the first qualification that needs it does, with a progress line. Only the
library is kept (the cargo target directory is removed after the build).

At run time Kryoptic reads the toml file named by KRYOPTIC_CONF: one slot with its own
sqlite database per run. The library exports only C_GetFunctionList, C_GetInterface and
C_GetInterfaceList, not the C_* symbols Barbican's cffi binding looks up.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from harness.procs import CommandError, run
from harness.qualify.provision.base import ModuleUnavailable, Provisioner

VERSION = "1.5.4"
FEATURES = "minimal,kryoptic-lib/dynamic"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "barbican-harness" / f"kryoptic-{VERSION}"
LIBRARY = CACHE / "libkryoptic_pkcs11.so"
BUILD_TIMEOUT = 3600.0
SLOT = 7


def cargo() -> str | None:
    found = shutil.which("cargo")
    if found:
        return found
    home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo")) / "bin" / "cargo"
    return str(home) if home.is_file() else None


def ensure_built(log: Callable[[str], None] = lambda s: None) -> Path:
    """The cached library; built (once per machine, under a lock) when missing."""
    if LIBRARY.is_file():
        return LIBRARY
    tool = cargo()
    if tool is None:
        raise ModuleUnavailable("cargo not found: Kryoptic is a Rust crate built with cargo (install Rust, e.g. "
                                "rustup, then ./run setup)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)       # another run may be building it right now
        if LIBRARY.is_file():
            return LIBRARY
        log(f"building Kryoptic {VERSION} with cargo, once per machine (a few minutes; cached in {CACHE})")
        t0 = time.monotonic()
        try:
            _build(tool, log)
        except CommandError as exc:
            raise ModuleUnavailable(f"the Kryoptic build failed (log: {CACHE / 'build.log'}): "
                                    f"{str(exc).splitlines()[0]}") from None
        log(f"built Kryoptic {VERSION} in {time.monotonic() - t0:.0f} s: {LIBRARY}")
    return LIBRARY


def _build(tool: str, log: Callable[[str], None]) -> None:
    fetch, src, target = CACHE / "fetch", CACHE / "src", CACHE / "target"
    (fetch / "src").mkdir(parents=True, exist_ok=True)
    (fetch / "Cargo.toml").write_text(f'[package]\nname = "kryoptic-fetch"\nversion = "0.0.0"\nedition = "2021"\n'
                                      f'[dependencies]\nkryoptic = "={VERSION}"\n')
    (fetch / "src" / "main.rs").write_text("fn main() {}\n")
    build_log = CACHE / "build.log"
    run([tool, "fetch", "--manifest-path", str(fetch / "Cargo.toml")], timeout=900, what="cargo fetch kryoptic",
        log_path=build_log)
    meta = run([tool, "metadata", "--format-version", "1", "--manifest-path", str(fetch / "Cargo.toml")],
               timeout=300, what="cargo metadata", log_path=None)
    packages = json.loads(meta.stdout)["packages"]
    manifest = next(Path(p["manifest_path"]) for p in packages if p["name"] == "kryoptic" and p["version"] == VERSION)
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(manifest.parent, src)
    compiled = [0]

    def progress(line: str) -> None:
        if line.strip().startswith("Compiling"):
            compiled[0] += 1
            if compiled[0] % 25 == 0:
                log(f"  cargo: {compiled[0]} crates compiled ...")

    run([tool, "build", "--release", "--locked", "--no-default-features", "--features", FEATURES,
         "--target-dir", str(target)], timeout=BUILD_TIMEOUT, what="cargo build kryoptic", cwd=src,
        log_path=build_log, stream=progress)
    built = target / "release" / "libkryoptic_pkcs11.so"
    tmp = LIBRARY.with_suffix(".so.tmp")
    shutil.copy2(built, tmp)
    os.replace(tmp, LIBRARY)      # the library appears whole or not at all
    shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(fetch, ignore_errors=True)


class KryopticProvisioner(Provisioner):
    name = "kryoptic"
    title = f"Kryoptic {VERSION}"
    packages = ("cargo", "libclang-dev", "libssl-dev", "libsqlite3-dev", "pkg-config")

    @classmethod
    def prepare_machine(cls, log: Callable[[str], None]) -> None:
        ensure_built(log)

    def library(self) -> str:
        return str(LIBRARY)

    def check(self) -> None:
        ensure_built(self.log)

    @property
    def conf(self) -> Path:
        return self.workdir / "kryoptic.conf"

    def start(self) -> None:
        self.conf.write_text(f'[[slots]]\nslot = {SLOT}\ndbtype = "sqlite"\n'
                             f'dbargs = "{self.workdir / "token.sql"}"\n')

    def env(self) -> dict[str, str]:
        return {"KRYOPTIC_CONF": str(self.conf)}

    def token_slot(self) -> int | None:
        return SLOT

    def facts(self) -> list[str]:
        return [f"built from crates.io with cargo (features {FEATURES}), cached at {LIBRARY}; no daemon; "
                f"KRYOPTIC_CONF names one slot with its own sqlite database per run"]


if __name__ == "__main__":
    if sys.argv[1:] != ["build"]:
        sys.exit("usage: python -m harness.qualify.provision.kryoptic build")
    try:
        print(ensure_built(lambda s: print(s, file=sys.stderr, flush=True)))
    except ModuleUnavailable as exc:
        sys.exit(f"error: {exc}")
