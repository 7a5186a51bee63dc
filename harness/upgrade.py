"""The upgrade gate: does Barbican FROM → TO keep every secret readable?

    barbican-harness upgrade-gate --from 18.0.0 --to 23.0.0 [--env environments/simple-crypto.yaml]

1. Each Barbican release runs from its own venv, cached under
   ~/.cache/barbican-harness/venvs/barbican-<version>/ (installed once, with the pins that
   were measured to work on CPython 3.11: the release series' OpenStack upper-constraints
   as installed here, see RELEASES). The release the harness itself runs (23.0.0) uses the
   harness's venv. Keystone, MariaDB, SoftHSM ... are always the harness's.
2. The environment comes up on FROM: `barbican-manage db upgrade`, `hsm gen_mkek/gen_hmac`
   and the uWSGI API nodes all run from FROM's venv (each node's `/?build` must say FROM).
3. Secrets of every type (opaque, symmetric, passphrase, private, public, certificate, a TLS
   container's members, a LUKS key with a consumer, an order-generated key) are written
   through the integrity ledger on every store of the topology, and verified on FROM.
4. Preflight, before TO ever starts: the simple_crypto KEKs FROM really used (its config,
   or its built-in default when the config has no `kek =` line) against the KEKs TO will
   have (TO's rendered config, or TO's built-in default: none since 21.0.0). This is the
   2025.2 trap: FROM ≤ 20.x without a `kek` line silently used the public default KEK,
   which 21.0.0 removed. The secrets at risk are named from the database.
5. Barbican stops; TO's `barbican-manage db upgrade` runs on the same database (same
   SoftHSM token); TO's nodes start; every ledger secret must read back byte-identical
   (LedgerChecker, then through every node); new secrets must work on every node; then
   the conformance API suite runs on TO.

The verdict is PASS (exit 0) or FAIL (exit 1); ERROR (exit 2) when the gate could not be
run at all (unknown release, venv install failed, FROM did not come up). The run
directory gets upgrade-gate.json and upgrade-gate.txt (the human summary).

How FROM's programs are used without touching the services' code: Barbican's service
objects take their binaries from `ctx.bin()`; during the gate their `ctx` is a thin view
of the run's context whose `bin()` points at the release's venv and whose environment puts
the harness's WSGI module on PYTHONPATH (the release venv holds Barbican, pyuwsgi and its
pins only). Releases before 18.0.0 read the database URL from [DEFAULT] sql_connection;
that line is added to their barbican.conf.

Which releases run here (RELEASES): 14.0.0 (2022.1 Yoga) to 22.0.0, and 23.0.0 from the
harness's venv; 13.0.0 (Xena) and older do not (see RELEASES for why). pkcs11 topologies
need FROM ≥ 20.0.0 (key_wrap_mechanism, for SoftHSM). The default-KEK trap needs FROM ≤ 20.0.0.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import secrets as _rand
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

import harness
from harness.errors import HarnessError, ServiceStartError

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "barbican-harness"
VENVS = CACHE / "venvs"
REPO = Path(harness.__file__).resolve().parent.parent
INSTALL_TIMEOUT = float(os.environ.get("BARBICAN_HARNESS_VENV_TIMEOUT", "1200"))
CONFORMANCE_TIMEOUT = float(os.environ.get("BARBICAN_HARNESS_UPGRADE_CONFORMANCE_TIMEOUT", "1800"))
# With --barbican-run every conformance test is in one xdist group (one environment with
# project-wide state such as quotas), so `-n 2 --dist loadgroup` runs them on one worker
# anyway. With pytest 9.2.0 + pytest-xdist 3.8.0 xdist_group is silently ignored (xdist
# sets item._nodeid, pytest 9.2 reads item._id): `-n 2` then spreads the suite over two
# workers and the quota tests race (measured: ~100 failures on a healthy 23.0.0).
CONFORMANCE_WORKERS = os.environ.get("BARBICAN_HARNESS_UPGRADE_CONFORMANCE_WORKERS", "1")
DEFAULT_ENV = REPO / "environments" / "simple-crypto.yaml"

FROM_CONFIGS = ("harness", "default-kek")
BREAK_MODES = ("none", "kek-change")
SIMPLE_CRYPTO_CLASS = "barbican.plugin.crypto.simple_crypto.SimpleCryptoPlugin"
# What each release needs besides Barbican to run under the harness.
EXTRA_REQUIREMENTS = ("pyuwsgi", "PyMySQL", "pykmip")


class FromBroken(HarnessError):
    """FROM itself cannot do what the gate needs (e.g. p11_crypto on SoftHSM before 20.0.0):
    the upgrade cannot be judged (verdict ERROR)."""


# -- releases -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Release:
    version: str
    series: str
    # Why this release does not run here (measured); empty when it works.
    broken: str = ""
    note: str = ""

    @property
    def pins(self) -> str:
        return _PINS.get(self.version, "")


# Measured here (CPython 3.11.7, Debian bookworm, SoftHSM 2.6.1, MariaDB 10.11): each
# release installed from its series' upper-constraints, then the gate FROM it → 23.0.0.
RELEASES: dict[str, Release] = {r.version: r for r in [
    Release("13.0.0", "2021.2 Xena", broken=(
        "PyYAML 5.4.1 does not build; with it swapped, uWSGI cannot load the API: eventlet 0.32 (TypeError: "
        "cannot set 'is_timeout' attribute of immutable type 'TimeoutError'), then dnspython 1.16 "
        "(collections.MutableMapping). Swapping the runtime libraries too is no longer the released Xena")),
    Release("14.0.0", "2022.1 Yoga", note=(
        "oldest that works: Yoga pins with wrapt 1.14.1, yappi 1.4.0, greenlet 2.0.1 (the pinned ones do not "
        "build on 3.11); database URL in [DEFAULT] sql_connection; no pkcs11 on SoftHSM")),
    Release("15.0.0", "2022.2 Zed", note="Zed pins with yappi 1.4.0, greenlet 2.0.1 (the pinned ones do not build)"),
    Release("16.0.0", "2023.1 Antelope"),
    Release("17.0.0", "2023.2 Bobcat"),
    Release("18.0.0", "2024.1 Caracal", note="first with [database] connection"),
    Release("19.0.0", "2024.2 Dalmatian"),
    Release("20.0.0", "2025.1 Epoxy", note="last with simple_crypto's default KEK; first with key_wrap_mechanism"),
    Release("21.0.0", "2025.2 Flamingo", note="no default KEK"),
    Release("22.0.0", "2026.1 Gazpacho"),
    Release("23.0.0", "2026.2", note="the harness's own venv"),
]}
# pkcs11 on SoftHSM 2.6.1 needs key_wrap_mechanism = CKM_AES_KEY_WRAP_PAD: releases without
# that option wrap with CKM_AES_CBC_PAD, which SoftHSM rejects (CKR_MECHANISM_INVALID).


def release(version: str) -> Release:
    if version not in RELEASES:
        known = ", ".join(sorted(RELEASES, key=_vkey))
        raise HarnessError(f"no pins recorded for Barbican {version}; known releases: {known} "
                           f"(add one to harness/upgrade.py RELEASES)")
    rel = RELEASES[version]
    if not rel.broken and not rel.pins:
        raise HarnessError(f"Barbican {version} is the harness's own release; it has no pins of its own")
    if rel.broken:
        raise HarnessError(f"Barbican {version} ({rel.series}) does not run on Python 3.11 here: {rel.broken}")
    return rel


def _vkey(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("."))


def harness_barbican_version() -> str:
    from importlib.metadata import version

    return version("barbican")


# -- one venv per release -------------------------------------------------------------------
@dataclass
class BarbicanVenv:
    version: str
    prefix: Path
    is_harness: bool  # the harness's own venv (no PYTHONPATH needed, shared with Keystone)
    cached: bool = True
    install_seconds: float | None = None
    kek_default: list[str] = field(default_factory=list)  # see probe_release
    legacy_sql_connection: bool = False
    p11_key_wrap_mechanism: bool = True

    @property
    def bin_dir(self) -> Path:
        return self.prefix / "bin"

    @property
    def python(self) -> Path:
        return self.bin_dir / "python"

    @property
    def harness_path(self) -> Path:
        """A directory holding only a `harness` link to this checkout, for PYTHONPATH."""
        return self.prefix / "harness-path"

    def link_harness(self) -> None:
        if self.is_harness:
            return
        self.harness_path.mkdir(exist_ok=True)
        link = self.harness_path / "harness"
        target = Path(harness.__file__).resolve().parent
        if link.is_symlink() and Path(os.readlink(link)) == target:
            return
        tmp = self.harness_path / f".harness.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, link)


def _pins_digest(rel: Release) -> str:
    return hashlib.sha256(f"{rel.version}\n{rel.pins}\n{' '.join(EXTRA_REQUIREMENTS)}".encode()).hexdigest()[:16]


def venv_for(version: str, log=None, timeout: float = INSTALL_TIMEOUT) -> BarbicanVenv:
    """The venv that runs Barbican `version`: the harness's own when it is that release,
    else a cached one (installed now when missing, under a lock: xdist workers wait)."""
    log = log or (lambda msg: None)
    if version == harness_barbican_version():
        return BarbicanVenv(version, Path(sys.prefix), is_harness=True)
    rel = release(version)
    prefix = VENVS / f"barbican-{version}"
    stamp = prefix / ".harness-venv.json"
    want = _pins_digest(rel)
    VENVS.mkdir(parents=True, exist_ok=True)
    with _locked(VENVS / f"barbican-{version}.lock", timeout + 120):
        try:
            if json.loads(stamp.read_text()).get("digest") == want and (prefix / "bin" / "python").exists():
                venv = BarbicanVenv(version, prefix, is_harness=False)
                venv.link_harness()
                return venv
        except (OSError, json.JSONDecodeError):
            pass
        log(f"installing Barbican {version} ({rel.series}) into {prefix} (once; cached)")
        start = time.monotonic()
        _install(rel, prefix, timeout)
        seconds = time.monotonic() - start
        stamp.write_text(json.dumps({"version": version, "series": rel.series, "digest": want,
                                     "installed": dt.datetime.now(dt.UTC).isoformat(),
                                     "seconds": round(seconds, 1)}))
    venv = BarbicanVenv(version, prefix, is_harness=False, cached=False, install_seconds=round(seconds, 1))
    venv.link_harness()
    return venv


@contextlib.contextmanager
def _locked(path: Path, timeout: float):
    with open(path, "w") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise HarnessError(f"{path}: another process has held this lock for {timeout:.0f} s") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _base_python() -> str:
    return getattr(sys, "_base_executable", None) or sys.executable


def _install(rel: Release, prefix: Path, timeout: float) -> None:
    shutil.rmtree(prefix, ignore_errors=True)
    log_path = VENVS / f"barbican-{rel.version}.install.log"
    deadline = time.monotonic() + timeout
    try:
        _run_logged([_base_python(), "-m", "venv", str(prefix)], log_path, 120)
        constraints = prefix / "harness-constraints.txt"
        constraints.write_text("\n".join(rel.pins.split()) + "\n")
        args = [str(prefix / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                "--no-input", "-q", "-c", str(constraints), f"barbican=={rel.version}", *EXTRA_REQUIREMENTS]
        _run_logged(args, log_path, max(30.0, deadline - time.monotonic()))
        got = subprocess.run(
            [str(prefix / "bin" / "python"), "-c",
             "import importlib.metadata as m, barbican.cmd.barbican_manage, pyuwsgi; print(m.version('barbican'))"],
            check=False, capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir(),
            env={**os.environ, "HOME": tempfile.gettempdir()})
        if got.returncode != 0 or got.stdout.strip() != rel.version:
            raise HarnessError(f"Barbican {rel.version} installed but does not import: "
                               f"{(got.stderr or got.stdout).strip().splitlines()[-1:]}")
    except BaseException:
        shutil.rmtree(prefix, ignore_errors=True)
        raise


def _run_logged(argv: list[str], log_path: Path, timeout: float) -> None:
    """A command of ours with a timeout; on timeout its whole process group is stopped."""
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except BaseException as exc:  # timeout or Ctrl-C: what we started stops with us
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise HarnessError(f"{' '.join(argv[:6])} ...: stopped after {timeout:.0f} s "
                                   f"(log: {log_path})") from None
            raise
    if rc != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise HarnessError(f"{' '.join(argv[:6])} ... failed (exit {rc}); log {log_path}:\n{tail}")


_PROBE = """
import json, sys
sys.argv = sys.argv[:1]
from barbican.common import config
from barbican.plugin.crypto import simple_crypto as s
d = [o.default for o in s.simple_crypto_plugin_opts if o.name == 'kek'][0]
d = [] if d is None else ([d] if isinstance(d, str) else list(d))
conf = config.new_config()
try:
    from barbican.plugin.crypto import p11_crypto
    wrap = any(o.name == "key_wrap_mechanism" for o in p11_crypto.p11_crypto_plugin_opts)
except Exception:
    wrap = False
print("FACTS " + json.dumps({"kek_default": d, "legacy_sql_connection": "sql_connection" in conf,
                             "p11_key_wrap_mechanism": wrap}))
"""


def probe_release(venv: BarbicanVenv) -> BarbicanVenv:
    """What the gate needs to know about a release, asked of its own code: simple_crypto's
    built-in default KEK ([] since 21.0.0), whether the database URL is still
    [DEFAULT] sql_connection (before 18.0.0) rather than [database] connection, and whether
    p11_crypto has key_wrap_mechanism (20.0.0+; SoftHSM needs CKM_AES_KEY_WRAP_PAD)."""
    with tempfile.TemporaryDirectory() as home:
        proc = subprocess.run([str(venv.python), "-c", _PROBE], check=False, capture_output=True, text=True,
                              timeout=120, cwd=home, env={**os.environ, "HOME": home, "PYTHONPATH": ""})
    for line in proc.stdout.splitlines():
        if line.startswith("FACTS "):
            facts = json.loads(line[len("FACTS "):])
            venv.kek_default = facts["kek_default"]
            venv.legacy_sql_connection = facts["legacy_sql_connection"]
            venv.p11_key_wrap_mechanism = facts["p11_key_wrap_mechanism"]
            return venv
    raise HarnessError(f"cannot inspect Barbican {venv.version} in {venv.prefix}: "
                       f"{(proc.stderr or proc.stdout).strip()[-300:]}")


# -- Barbican services on a release's venv --------------------------------------------------
class _ReleaseContext:
    """The run's context as Barbican's services of one release see it: same run directory,
    ports and secrets; programs from the release's venv; the harness's WSGI module on
    PYTHONPATH."""

    def __init__(self, ctx, venv: BarbicanVenv):
        self._ctx = ctx
        self._venv = venv

    @property
    def bin_dir(self) -> Path:
        return self._venv.bin_dir

    def bin(self, name: str) -> str:
        return str(self._venv.bin_dir / name)

    def environ(self, **extra: str) -> dict:
        env = self._ctx.environ(**extra)
        env["PYTHONPATH"] = str(self._venv.harness_path)
        env.pop("VIRTUAL_ENV", None)
        return env

    def render(self, template: str, dest: Path, **values) -> Path:
        path = self._ctx.render(template, dest, **values)
        if template == "barbican.conf.j2" and self._venv.legacy_sql_connection:
            # Barbican < 18.0.0 reads the database URL from [DEFAULT] sql_connection.
            legacy = f"sql_connection = {values['db_url']}\n"
            if values["db_url"].startswith("mysql"):
                legacy += "sql_pool_size = 10\nsql_pool_max_overflow = 20\n"
            text = path.read_text().replace("[DEFAULT]\n", "[DEFAULT]\n" + legacy, 1)
            path.write_text(text)  # still 0600: written in place
        return path

    def __getattr__(self, name):
        return getattr(self._ctx, name)


def _bind_release(provider, ctx, venv: BarbicanVenv, overrides: dict) -> None:
    """Point every Barbican service of `provider` at `venv` with node `overrides`."""
    bound = ctx if venv.is_harness else _ReleaseContext(ctx, venv)
    provider.config.ctx = bound
    for node in provider.nodes:
        node.ctx = bound
        node.overrides = dict(overrides)
    for worker in provider.workers:
        worker.ctx = bound
        # The worker renders without node overrides; it must see the same [simple_crypto_plugin].
        worker.render = (lambda w=worker: provider.config.render(w.home, w.name, "http://127.0.0.1", overrides))


def _environment_class(venv: BarbicanVenv, overrides: dict):
    """An Environment whose Barbican services run from `venv`. Environment.up saves the
    state once the provider exists and before it starts anything: that is where the
    services are bound (verified afterwards through each node's /?build)."""
    from harness.environment import Environment

    class ReleaseEnvironment(Environment):
        def save_state(self) -> None:
            if self.provider is not None and not getattr(self, "_release_bound", False):
                self._release_bound = True
                _bind_release(self.provider, self.ctx, venv, overrides)
            super().save_state()

    return ReleaseEnvironment


def node_builds(env) -> dict[str, str]:
    """node → the Barbican version it runs (GET /?build, unauthenticated)."""
    import requests

    out = {}
    for node in env.nodes:
        try:
            r = requests.get(node.url + "/", params={"build": ""}, timeout=10)
            out[node.name] = r.json().get("build", f"HTTP {r.status_code}") if r.ok else f"HTTP {r.status_code}"
        except Exception as exc:  # noqa: BLE001 - reported
            out[node.name] = f"no answer ({type(exc).__name__})"
    return out


# -- config facts ---------------------------------------------------------------------------
def configured_keks(conf: Path) -> list[str]:
    """The `kek` values of [simple_crypto_plugin] in a barbican.conf (multi-valued)."""
    section, keks = None, []
    for raw in conf.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == "simple_crypto_plugin" and "=" in line:
            key, value = (p.strip() for p in line.split("=", 1))
            if key == "kek":
                keks.append(value)
    return keks


def fingerprint(kek: str) -> str:
    return "sha256:" + hashlib.sha256(kek.encode()).hexdigest()[:12]


@dataclass
class KekSide:
    version: str
    configured: dict[str, list[str]]  # node → kek lines in its barbican.conf (values never reported)
    default: list[str]

    def effective(self, node: str) -> list[str]:
        return self.configured.get(node) or self.default

    def describe(self) -> dict:
        return {
            "version": self.version,
            "explicit_kek": {n: bool(k) for n, k in self.configured.items()},
            "configured": {n: [fingerprint(k) for k in ks] for n, ks in self.configured.items()},
            "builtin_default": [fingerprint(k) for k in self.default],
            "effective": {n: [fingerprint(k) for k in self.effective(n)] for n in self.configured},
        }


def kek_continuity(old: KekSide, new: KekSide, at_risk: list[str]) -> dict:
    """Will TO unwrap the project KEKs FROM wrapped? Decided from configs and defaults only."""
    findings = []
    for node in old.configured:
        was, will = old.effective(node), new.effective(node)
        if not was:
            findings.append({"node": node, "kind": "no-kek-on-from",
                             "message": f"{node}: FROM {old.version} has neither a kek line nor a default KEK"})
        elif not old.configured[node] and not new.configured.get(node) and not new.default:
            findings.append({"node": node, "kind": "default-kek-removed", "message": (
                f"the 2025.2 trap on {node}: FROM {old.version}'s barbican.conf has no `kek =` line in "
                f"[simple_crypto_plugin], so every project KEK is wrapped with the built-in default KEK "
                f"({fingerprint(was[0])}); TO {new.version} has no default KEK (removed in 21.0.0, 2025.2) "
                f"and the config still sets none, so simple_crypto cannot load and the "
                f"{len(at_risk)} simple_crypto secret(s) written so far become unreadable. Before upgrading, "
                f"write the old default into [simple_crypto_plugin] explicitly (kek = {was[0]}: public, "
                f"from Barbican's source), then rotate it (new kek first, simple_crypto rewrap_pkek)")})
        elif was[0] not in will:
            findings.append({"node": node, "kind": "primary-kek-missing", "message": (
                f"{node}: TO's KEKs ({', '.join(fingerprint(k) for k in will) or 'none'}) do not include "
                f"FROM's primary KEK {fingerprint(was[0])}, which wrapped the project KEKs: the "
                f"{len(at_risk)} simple_crypto secret(s) become unreadable")})
        elif missing := [k for k in was[1:] if k not in will]:
            findings.append({"node": node, "kind": "old-kek-dropped", "warning": True, "message": (
                f"{node}: TO drops FROM's older KEK(s) {', '.join(fingerprint(k) for k in missing)}: "
                f"project KEKs still wrapped with them become unreadable")})
    return {
        "from": old.describe(), "to": new.describe(),
        "at_risk_secrets": at_risk,
        "findings": findings,
        "ok": not [f for f in findings if not f.get("warning")],
    }


def secret_plugins(env) -> dict[str, str]:
    """secret id → the crypto plugin class that holds it (kek_data.plugin_name), read from
    Barbican's database; {} when the database cannot be read."""
    query = ("SELECT s.id, k.plugin_name FROM secrets s JOIN encrypted_data e ON e.secret_id = s.id "
             "JOIN kek_data k ON k.id = e.kek_id WHERE s.deleted = 0")
    db = env.provider.database
    try:
        if env.ctx.topology.database == "sqlite":
            import sqlite3

            with contextlib.closing(sqlite3.connect(env.run_dir / "sqlite" / "barbican.db")) as conn:
                rows = conn.execute(query).fetchall()
        else:
            with db.connect("barbican") as conn, conn.cursor() as cur:
                cur.execute(query)
                rows = cur.fetchall()
    except Exception:  # noqa: BLE001 - a missing fact, not a failure
        return {}
    return {str(sid): plugin for sid, plugin in rows}


def alembic_revision(env) -> str | None:
    try:
        if env.ctx.topology.database == "sqlite":
            import sqlite3

            with contextlib.closing(sqlite3.connect(env.run_dir / "sqlite" / "barbican.db")) as conn:
                return ",".join(r[0] for r in conn.execute("SELECT version_num FROM alembic_version"))
        with env.provider.database.connect("barbican") as conn, conn.cursor() as cur:
            cur.execute("SELECT version_num FROM alembic_version")
            return ",".join(r[0] for r in cur.fetchall())
    except Exception:  # noqa: BLE001
        return None


# -- seeding on every store -----------------------------------------------------------------
CRYPTO_PLUGIN = {"simple_crypto": "simple_crypto", "pkcs11": "p11_crypto", "kmip": None}
STORE_PLUGIN = {"simple_crypto": "store_crypto", "pkcs11": "store_crypto", "kmip": "kmip_plugin"}


@dataclass
class Seeded:
    store: dict[str, str] = field(default_factory=dict)  # ref → topology store name
    backend: dict[str, str] = field(default_factory=dict)  # ref → backend of that store
    types: dict[str, str] = field(default_factory=dict)  # ref → secret type


def _store_refs(env) -> dict[str, str]:
    """topology store name → Barbican secret_store_ref (multiple stores only)."""
    sess = env.session(env.writer_role)
    r = sess.get(env.node().url + "/v1/secret-stores", raise_exc=False, timeout=15)
    if r.status_code != 200:
        raise HarnessError(f"GET /v1/secret-stores: HTTP {r.status_code}")
    listed = r.json()["secret_stores"]
    out = {}
    for spec in env.ctx.topology.stores:
        for s in listed:
            if (s.get("crypto_plugin") == CRYPTO_PLUGIN[spec.backend]
                    and s.get("secret_store_plugin") == STORE_PLUGIN[spec.backend]):
                out[spec.name] = s["secret_store_ref"]
                break
        else:
            raise HarnessError(f"store '{spec.name}' ({spec.backend}) is not in Barbican's secret-stores: {listed}")
    return out


def _set_preferred(env, store_ref: str | None, previous: str | None) -> None:
    """Project-preferred store of both seeded projects (as their admins)."""
    for admin in ("admin", "other-admin"):
        sess = env.session(admin)
        if previous:
            sess.delete(previous + "/preferred", raise_exc=False, timeout=15)
        if store_ref:
            r = sess.post(store_ref + "/preferred", raise_exc=False, timeout=15)
            if r.status_code != 204:
                raise HarnessError(f"setting the preferred store {store_ref} as {admin}: HTTP {r.status_code}")


def _order_key(env, ledger, node: str, timeout: float = 60.0) -> str:
    """A key Barbican generated (key order); its payload as read back on FROM goes into the ledger."""
    role = env.writer_role
    client = env.barbican(role=role, node=node)
    name = ledger.new_name("order")
    ref = client.orders.create_key(name=name, algorithm="aes", bit_length=256, mode="cbc",
                                   payload_content_type="application/octet-stream").submit()
    deadline = time.monotonic() + timeout
    while True:
        order = client.orders.get(ref)
        if order.status == "ACTIVE":
            break
        if order.status == "ERROR" or time.monotonic() > deadline:
            raise HarnessError(f"seeding: key order {ref} is {order.status}")
        time.sleep(0.3)
    payload = client.secrets.get(order.secret_ref).payload
    ledger.created(name, payload, role, node, "ok", ref=order.secret_ref, secret_type="symmetric", tags=["order"])
    return order.secret_ref


def seed_every_store(env, ledger, per_type: int = 1) -> Seeded:
    """Secrets of every type through the ledger, on each store of the topology (several
    stores: each made the preferred store of both projects in turn)."""
    from harness.seeding import seed

    topo = env.ctx.topology
    out = Seeded()
    refs = _store_refs(env) if topo.multiple_stores else {}
    previous = None
    try:
        for spec in topo.stores:
            if topo.multiple_stores:
                _set_preferred(env, refs[spec.name], previous)
                previous = refs[spec.name]
            before = {e.ref for e in ledger.entries() if e.ref}
            seed(env, ledger, secrets=6 * per_type, tls_containers=1, luks_keys=1)
            _order_key(env, ledger, env.nodes[-1].name)
            for e in ledger.entries():
                if e.op == "create" and e.ref and e.ref not in before:
                    out.store[e.ref], out.backend[e.ref] = spec.name, spec.backend
                    out.types[e.ref] = e.secret_type or "opaque"
    finally:
        if previous:
            _set_preferred(env, None, previous)
    return out


def read_through_every_node(env, ledger) -> dict[str, dict[str, str]]:
    """ref → {node: why} for every acknowledged secret a node cannot read back byte-identical."""
    from harness.ledger import sha256

    bad: dict[str, dict[str, str]] = {}
    for e in ledger.entries():
        if e.op != "create" or e.outcome != "ok" or not e.ref:
            continue
        path = e.ref[e.ref.index("/v1/"):]
        for node in env.nodes:
            try:
                r = env.session(e.role).get(node.url + path + "/payload", raise_exc=False, timeout=15,
                                            headers={"Accept": "application/octet-stream"})
            except Exception as exc:  # noqa: BLE001 - a node that does not answer cannot read it
                bad.setdefault(e.ref, {})[node.name] = f"no answer ({type(exc).__name__})"
                continue
            if r.status_code != 200:
                bad.setdefault(e.ref, {})[node.name] = f"HTTP {r.status_code}"
            elif sha256(r.content) != e.sha256:
                bad.setdefault(e.ref, {})[node.name] = "payload differs"
    return bad


def new_secrets_work(env, stores: dict[str, str] | None) -> dict[str, str]:
    """'node[/store]' → error, for each node (and store) where a new secret cannot be stored
    and read back in the seeded project; {} when all work."""
    errors = {}
    targets = [(None, None)] if not stores else list(stores.items())
    previous = None
    try:
        for store_name, store_ref in targets:
            if store_ref:
                _set_preferred(env, store_ref, previous)
                previous = store_ref
            for node in env.nodes:
                key = node.name + (f"/{store_name}" if store_name else "")
                payload = _rand.token_hex(16)
                try:
                    client = env.barbican(node=node.name)
                    ref = client.secrets.create(name="upgrade-gate-new", payload=payload,
                                                payload_content_type="text/plain").store()
                    if client.secrets.get(ref).payload != payload:
                        errors[key] = "read back different"
                    client.secrets.delete(ref)
                except Exception as exc:  # noqa: BLE001 - reported
                    errors[key] = f"{type(exc).__name__}: {str(exc)[:160]}"
    finally:
        if previous:
            with contextlib.suppress(Exception):
                _set_preferred(env, None, previous)
    return errors


# -- conformance on TO ----------------------------------------------------------------------
def run_conformance(env, timeout: float = CONFORMANCE_TIMEOUT) -> dict:
    """conformance/api against the running TO environment, as a subprocess with a timeout."""
    from harness.environment import reports_dir

    suite = REPO / "conformance" / "api"
    if not suite.is_dir():
        # The step "new secrets on TO (every node and store)" is then the only smoke test.
        return {"ran": False, "ok": True, "reason": f"{suite} does not exist"}
    junit = env.run_dir / "upgrade-conformance.xml"
    log_path = env.ctx.logs_dir / "upgrade-conformance.log"
    argv = [sys.executable, "-m", "pytest", "conformance/api", "--barbican-run", env.run_id, "-q",
            "-n", CONFORMANCE_WORKERS, "--dist", "loadgroup", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    start = time.monotonic()
    environ = {**os.environ, "BARBICAN_HARNESS_REPORTS": str(reports_dir())}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=environ, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc, timed_out = None, True
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    out = {"ran": True, "command": " ".join(argv[1:]), "exit_code": rc, "timed_out": timed_out,
           "seconds": round(time.monotonic() - start, 1), "log": str(log_path), "junit": str(junit)}
    out.update(_junit_counts(junit))
    out["ok"] = rc == 0
    tail = log_path.read_text(errors="replace").splitlines()
    out["last_line"] = next((line for line in reversed(tail) if line.strip()), "")
    return out


def _junit_counts(path: Path) -> dict:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname')}::{c.get('name')}" for s in suites for c in s.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    counts["failed_tests"] = failed[:50]
    return counts


# -- the gate -------------------------------------------------------------------------------
@dataclass
class GateReport:
    from_version: str
    to_version: str
    topology: str
    from_config: str
    break_mode: str
    run_id: str | None = None
    run_dir: str | None = None
    verdict: str = "ERROR"
    exit_code: int = 2
    started: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    seconds: float = 0.0
    venvs: dict = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)
    builds: dict = field(default_factory=dict)
    seeded: dict = field(default_factory=dict)
    preflight: dict = field(default_factory=dict)
    db_revision: dict = field(default_factory=dict)
    from_verification: dict = field(default_factory=dict)
    verification: dict = field(default_factory=dict)
    new_operations: dict = field(default_factory=dict)
    conformance: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    unreadable_secrets: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class _Steps:
    def __init__(self, report: GateReport, echo):
        self.report, self.echo = report, echo

    @contextlib.contextmanager
    def step(self, name: str):
        start = time.monotonic()
        self.echo(f"… {name}")
        entry = {"step": name, "ok": False}
        self.report.steps.append(entry)
        try:
            yield entry
            entry["ok"] = entry.get("ok_override", True)
            entry.pop("ok_override", None)
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
            raise
        finally:
            entry["seconds"] = round(time.monotonic() - start, 1)
            mark = "✓" if entry["ok"] else "✗"
            self.echo(f"{mark} {name} ({entry['seconds']} s)")


def run_gate(from_version: str, to_version: str, env_path: str | Path | None = None,
             from_config: str = "harness", break_mode: str = "none", conformance: bool = True,
             echo=None) -> GateReport:
    """Run the gate; never leaves a process running. The report is also written to the run
    directory (upgrade-gate.json, upgrade-gate.txt)."""
    from harness.environment import new_run_id, runs_dir
    from harness.topology import load_topology

    echo = echo or (lambda msg: None)
    t0 = time.monotonic()
    env_path = Path(env_path or DEFAULT_ENV)
    report = GateReport(from_version, to_version, env_path.stem, from_config, break_mode)
    steps = _Steps(report, echo)
    env = None
    try:
        topology = load_topology(env_path)
        report.topology = topology.name
        if from_config not in FROM_CONFIGS:
            raise HarnessError(f"--from-config must be one of {', '.join(FROM_CONFIGS)}, got '{from_config}'")
        if break_mode not in BREAK_MODES:
            raise HarnessError(f"--break must be one of {', '.join(BREAK_MODES)}, got '{break_mode}'")
        if topology.provider != "local":
            raise HarnessError(f"{env_path}: the upgrade gate runs on the local provider, not '{topology.provider}'")
        if (from_config == "default-kek" or break_mode == "kek-change") and "simple_crypto" not in topology.backends:
            raise HarnessError(f"{env_path}: --from-config default-kek and --break kek-change need a "
                               f"simple_crypto store; stores: {topology.backends}")
        if _vkey(from_version) >= _vkey(to_version):
            raise HarnessError(f"--from {from_version} must be older than --to {to_version}")

        with steps.step("release venvs"):
            old = venv_for(from_version, log=echo)
            new = venv_for(to_version, log=echo)
            for side, v in (("from", old), ("to", new)):
                report.venvs[side] = {"version": v.version, "prefix": str(v.prefix), "harness_venv": v.is_harness,
                                      "cached": v.cached, "install_seconds": v.install_seconds}
            for side, v in (("from", probe_release(old)), ("to", probe_release(new))):
                report.venvs[side]["kek_default"] = [fingerprint(k) for k in v.kek_default]
                report.venvs[side]["legacy_sql_connection"] = v.legacy_sql_connection
        if ("pkcs11" in topology.backends and topology.hsm.module == "softhsm"
                and not (old.p11_key_wrap_mechanism and new.p11_key_wrap_mechanism)):
            too_old = old.version if not old.p11_key_wrap_mechanism else new.version
            raise HarnessError(
                f"{env_path.name}: Barbican {too_old}'s p11_crypto has no key_wrap_mechanism option (added in "
                f"20.0.0): it wraps project KEKs with CKM_AES_CBC_PAD, which SoftHSM 2.6.1 rejects "
                f"(CKR_MECHANISM_INVALID); gate pkcs11 topologies from 20.0.0 on")
        if from_config == "default-kek" and not old.kek_default:
            raise HarnessError(f"--from-config default-kek: Barbican {from_version} has no built-in default KEK "
                               f"(removed in 21.0.0), so simple_crypto cannot run without a kek line")

        from_overrides = {"keks": []} if from_config == "default-kek" else {}
        run_id = new_run_id(topology)
        report.run_id, report.run_dir = run_id, str(runs_dir() / run_id)
        with steps.step(f"environment up on FROM {from_version}"):
            env = _environment_class(old, from_overrides).up(env_path, run_id=run_id)
            report.builds["from"] = node_builds(env)
            wrong = {n: b for n, b in report.builds["from"].items() if b != from_version}
            if wrong:
                raise HarnessError(f"FROM nodes do not run Barbican {from_version}: {wrong}")
            report.db_revision["from"] = alembic_revision(env)
    except HarnessError as exc:
        report.error = str(exc)
        if report.run_dir and (Path(report.run_dir) / "logs").is_dir():
            report.error += f"; last server error: {last_server_error(Path(report.run_dir) / 'logs')}"
        report.failures.append(report.error)
        _finish(report, env, t0)
        return report
    except BaseException:
        _finish(report, env, t0, down_only=True)
        raise

    try:
        _gate_body(env, report, steps, old, new, from_overrides, break_mode, conformance, echo)
    except FromBroken as exc:
        report.error = str(exc)
        report.failures.append(str(exc))
        _finish(report, env, t0)
        return report
    except HarnessError as exc:
        report.failures.append(f"harness: {exc}")
    except Exception as exc:  # noqa: BLE001 - the verdict is FAIL with the reason; the env goes down
        report.failures.append(f"{type(exc).__name__}: {str(exc)[:500]}")
    except BaseException:
        _finish(report, env, t0, down_only=True)
        raise
    report.verdict = "FAIL" if report.failures else "PASS"
    report.exit_code = 1 if report.failures else 0
    _finish(report, env, t0)
    return report


def _gate_body(env, report: GateReport, steps: _Steps, old: BarbicanVenv, new: BarbicanVenv, from_overrides: dict,
               break_mode: str, conformance: bool, echo) -> None:
    from harness import redact
    from harness.context import fernet_key
    from harness.ledger import Ledger, LedgerChecker

    provider = env.provider
    topo = env.ctx.topology
    ledger = Ledger(env.run_dir / "ledger", prefix=f"upgrade-{_rand.token_hex(3)}")

    with steps.step("seed secrets of every type on every store (ledger)"):
        try:
            seeded = seed_every_store(env, ledger)
        except Exception as exc:  # noqa: BLE001 - FROM cannot be used: reported as such
            raise FromBroken(f"FROM {old.version} cannot store secrets on every store of {topo.name}: "
                             f"{str(exc)[:300]}; last server error: {last_server_error(env)}") from None
        report.seeded = {
            "count": len(seeded.store),
            "per_store": {s.name: sum(1 for v in seeded.store.values() if v == s.name) for s in topo.stores},
            "per_type": _count(seeded.types.values()),
            "ledger": str(ledger.directory), "prefix": ledger.prefix,
        }
    with steps.step(f"verify the ledger on FROM {old.version}") as st:
        baseline = LedgerChecker(ledger, env).check()
        report.from_verification = baseline.summary()
        if not baseline.ok or baseline.unreadable:
            raise FromBroken(f"FROM {old.version} itself does not read back its secrets: lost {baseline.lost}, "
                             f"corrupted {baseline.corrupted}; last server error: {last_server_error(env)}")

    # What the database says each secret is wrapped by (for the secrets at risk).
    plugins = secret_plugins(env)
    refs = {ref.rstrip("/").rsplit("/", 1)[-1]: ref for ref in seeded.store}
    if plugins:
        held = {ref: plugins.get(sid, "none (no encrypted_data: a store without crypto plugin)")
                for sid, ref in refs.items()}
        report.seeded["per_crypto_plugin"] = _count(held.values())
        misplaced = {ref: f"{seeded.store[ref]} → {plugin}" for ref, plugin in held.items()
                     if CRYPTO_PLUGIN[seeded.backend[ref]] and CRYPTO_PLUGIN[seeded.backend[ref]] not in plugin}
        if misplaced:
            raise FromBroken(f"seeded secrets did not land in their store: {misplaced}")
        simple = sorted(ref for ref, plugin in held.items() if plugin == SIMPLE_CRYPTO_CLASS)
    else:
        simple = sorted(ref for ref, b in seeded.backend.items() if b == "simple_crypto")

    to_overrides = dict(from_overrides)
    if break_mode == "kek-change":
        new_kek = fernet_key()
        redact.register(new_kek)
        to_overrides = {**to_overrides, "keks": [new_kek]}

    with steps.step("preflight: simple_crypto KEK continuity FROM → TO") as st:
        if "simple_crypto" in topo.backends:
            from_side = KekSide(old.version, {n.name: configured_keks(n.home / ".barbican" / "barbican.conf")
                                              for n in provider.nodes}, old.kek_default)
            preview = {}
            with tempfile.TemporaryDirectory(dir=env.run_dir) as tmp:
                for n in provider.nodes:
                    conf = provider.config.render(Path(tmp) / n.name, n.name, n.url, to_overrides)
                    preview[n.name] = configured_keks(conf)
            to_side = KekSide(new.version, preview, new.kek_default)
            report.preflight = kek_continuity(from_side, to_side, simple)
            for finding in report.preflight["findings"]:
                echo(("warning: " if finding.get("warning") else "preflight: ") + finding["message"])
            blocking = [f for f in report.preflight["findings"] if not f.get("warning")]
            if blocking:
                st["ok_override"] = False
                kinds = sorted({f["kind"] for f in blocking})
                report.failures.append(
                    f"preflight ({', '.join(kinds)}), before TO started: {blocking[0]['message']} "
                    f"(at risk: {len(simple)} secrets, listed in preflight.at_risk_secrets)")
        else:
            report.preflight = {"ok": True, "findings": [], "note": "no simple_crypto store"}

    with steps.step(f"stop Barbican {old.version}"):
        for worker in provider.workers:
            worker.stop()
            worker.processes.clear()
        for node in provider.nodes:
            node.stop()
            node.processes.clear()
        env.save_state()

    _bind_release(provider, env.ctx, new, to_overrides)
    with steps.step(f"barbican-manage db upgrade ({new.version}, same database)") as st:
        try:
            provider.nodes[0].manage("db", "upgrade", timeout=300)
        except ServiceStartError as exc:
            st["ok_override"] = False
            report.failures.append(f"TO {new.version}'s barbican-manage db upgrade failed: {exc}")
            return
        report.db_revision["to"] = alembic_revision(env)

    to_started = time.strftime("%Y-%m-%d %H:%M:%S")
    with steps.step(f"start Barbican {new.version}") as st:
        for node in provider.nodes:
            node.render()
            node.start()
        for worker in provider.workers:
            worker.render()
            worker.start()
        env.save_state()
        start_errors = {}
        for node in provider.nodes:
            try:
                node.wait_healthy(90)
            except ServiceStartError as exc:
                start_errors[node.name] = str(exc)[:600]
        for worker in provider.workers:
            try:
                worker.wait_healthy(90)
            except ServiceStartError as exc:
                start_errors[worker.name] = str(exc)[:600]
        report.builds["to"] = node_builds(env)
        if start_errors:
            st["ok_override"] = False
            st["start_errors"] = start_errors
            why = sorted({e.split("\n")[0].split(": ", 1)[-1] for e in start_errors.values()})
            report.failures.append(f"TO {new.version} did not start on {', '.join(start_errors)}: {'; '.join(why)} "
                                   f"(logs/<node>.log; server errors under verification.server_errors)")
        wrong = {n: b for n, b in report.builds["to"].items() if b != new.version and n not in start_errors}
        if wrong:
            st["ok_override"] = False
            report.failures.append(f"TO nodes do not run Barbican {new.version}: {wrong}")

    with steps.step(f"verify every seeded secret on TO {new.version}") as st:
        acknowledged = sorted(e.ref for e in ledger.entries() if e.op == "create" and e.outcome == "ok" and e.ref)
        try:
            result = LedgerChecker(ledger, env).check()
            report.verification = result.summary()
        except Exception as exc:  # noqa: BLE001 - e.g. TO not answering: every node is read below
            result = None
            report.verification = {"ledger_checker_error": f"{type(exc).__name__}: {str(exc)[:300]}",
                                   "acknowledged": len(acknowledged)}
        per_node = read_through_every_node(env, ledger)
        report.verification["through_every_node"] = per_node
        unreadable = dict(result.unreadable) if result else {}
        for ref in result.corrupted if result else ():
            unreadable.setdefault(ref, "payload differs")
        for ref, why in per_node.items():
            unreadable.setdefault(ref, "; ".join(f"{n}: {w}" for n, w in why.items()))
        report.verification["server_errors"] = server_errors_since(env.ctx.logs_dir, to_started)
        report.unreadable_secrets = {
            ref: f"{why} [{seeded.store.get(ref, '?')}/{seeded.backend.get(ref, '?')}, {seeded.types.get(ref, '?')}]"
            for ref, why in sorted(unreadable.items())}
        if unreadable or result is None or not result.ok:
            st["ok_override"] = False
            by_backend = _count(seeded.backend.get(r, "?") for r in unreadable)
            cause = next(iter(report.verification["server_errors"]), None)
            report.failures.append(
                f"TO {new.version} cannot read back {len(unreadable)} of {len(acknowledged)} secrets "
                f"written on FROM {old.version} ({', '.join(f'{b}: {n}' for b, n in sorted(by_backend.items()))}"
                + (f"; server: {cause}" if cause else "") + "): " + ", ".join(sorted(unreadable)))
            if result and (result.unexpected or result.resurrected):
                report.failures.append(f"unexpected {result.unexpected}, resurrected {result.resurrected}")

    with steps.step(f"new secrets on TO {new.version} (every node and store)") as st:
        try:
            stores = _store_refs(env) if topo.multiple_stores else None
            errors = new_secrets_work(env, stores)
        except Exception as exc:  # noqa: BLE001 - e.g. TO not answering at all
            errors = {"secret-stores": f"{type(exc).__name__}: {str(exc)[:160]}"}
        report.new_operations = {"ok": not errors, "errors": errors}
        if errors:
            st["ok_override"] = False
            report.failures.append(f"new secrets fail on TO {new.version}: {errors}")

    if not conformance:
        report.conformance = {"ran": False, "reason": "disabled"}
    elif report.failures:
        report.conformance = {"ran": False, "reason": "the gate already failed"}
    else:
        env.state["status"] = "up"
        env.save_state()
        with steps.step(f"conformance/api on TO {new.version}") as st:
            report.conformance = run_conformance(env)
            if not report.conformance.get("ok"):
                st["ok_override"] = False
                c = report.conformance
                report.failures.append(
                    f"conformance/api on TO: exit {c.get('exit_code')}{' (timed out)' if c.get('timed_out') else ''}, "
                    f"{c.get('failures', '?')} failed, {c.get('errors', '?')} errors of {c.get('tests', '?')}: "
                    f"{c.get('failed_tests', [])[:10]}")


def last_server_error(env_or_logs) -> str:
    """The last ERROR line of the Barbican nodes' logs (the cause behind a 500)."""
    logs = env_or_logs if isinstance(env_or_logs, Path) else env_or_logs.ctx.logs_dir
    last = ("", "")
    for log in sorted(logs.glob("barbican-*-app.log")):
        for line in log.read_text(errors="replace").splitlines():
            if " ERROR " in line and ("Exception" in line or "Error" in line) and ": " in line:
                stamp = line[:23]
                if stamp >= last[0]:
                    last = (stamp, line)
    if not last[1]:
        return "none logged"
    return re.sub(r"^\S+ \S+ \d+ ERROR \S+ ", "", re.sub(r"\[[^\]]*\] ", "", last[1]))[:300]


_EXC_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.\d+ \d+ ERROR \S+ "
                       r"((?:[A-Za-z_]\w*\.)*\w*(?:Error|Exception|NotFound|InvalidToken)\b(?::.*)?)$")


def server_errors_since(logs: Path, since: str) -> dict[str, int]:
    """Distinct exceptions ('ValueError: SimpleCrypto KEK is undefined') in the Barbican
    nodes' logs from `since` on, in order of first appearance, with their counts."""
    seen: dict[str, int] = {}
    for log in sorted(logs.glob("barbican-*-app.log")):
        for line in log.read_text(errors="replace").splitlines():
            m = _EXC_LINE.match(line)
            if m and m.group(1) >= since:
                key = m.group(2).strip()[:200]
                seen[key] = seen.get(key, 0) + 1
    return dict(list(seen.items())[:8])


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _finish(report: GateReport, env, t0: float, down_only: bool = False) -> None:
    if env is not None:
        try:
            busy = env.down()
            if busy:
                report.failures.append(f"ports still busy after down: {busy}")
        except Exception as exc:  # noqa: BLE001
            report.failures.append(f"down: {exc}")
    if down_only:
        return
    report.seconds = round(time.monotonic() - t0, 1)
    if report.run_dir and Path(report.run_dir).is_dir():
        from harness.redact import mask

        run_dir = Path(report.run_dir)
        (run_dir / "upgrade-gate.json").write_text(mask(json.dumps(report.to_dict(), indent=2)))
        (run_dir / "upgrade-gate.txt").write_text(mask(summary_text(report)))


def summary_text(report: GateReport) -> str:
    v = report.venvs
    lines = [(f"Upgrade gate: Barbican {report.from_version} → {report.to_version} on {report.topology}"
              f" (from-config {report.from_config}, break {report.break_mode})")]
    if report.run_id:
        lines.append(f"  run {report.run_id}")
    for side in ("from", "to"):
        if side in v:
            how = "harness venv" if v[side]["harness_venv"] else (
                "cached" if v[side]["cached"] else f"installed in {v[side]['install_seconds']} s")
            lines.append(f"  {side.upper():4} {v[side]['version']}: {v[side]['prefix']} ({how})")
    for s in report.steps:
        lines.append(f"  {'✓' if s['ok'] else '✗'} {s['step']} ({s['seconds']} s)"
                     + (f": {s['error']}" if s.get("error") else ""))
    if report.seeded:
        lines.append(f"  seeded {report.seeded['count']} secrets: per store {report.seeded['per_store']}, "
                     f"per type {report.seeded['per_type']}")
    if report.db_revision:
        lines.append(f"  database schema (alembic): FROM {report.db_revision.get('from')} "
                     f"→ TO {report.db_revision.get('to', '-')}")
    ver = report.verification
    if ver:
        lines.append(f"  TO read back {ver.get('verified', 0)}/{ver.get('acknowledged', 0)} byte-identical"
                     + (f"; server errors: {'; '.join(ver['server_errors'])}" if ver.get("server_errors") else ""))
    c = report.conformance
    if c.get("ran"):
        lines.append(f"  conformance/api: exit {c.get('exit_code')}, {c.get('tests', '?')} tests, "
                     f"{c.get('failures', '?')} failed, {c.get('errors', '?')} errors, {c.get('skipped', '?')} skipped "
                     f"({c.get('seconds')} s)")
    elif c:
        lines.append(f"  conformance/api not run: {c.get('reason')}")
    if report.unreadable_secrets:
        lines.append(f"  secrets TO could no longer decrypt ({len(report.unreadable_secrets)}):")
        lines += [f"    {ref}  {why}" for ref, why in report.unreadable_secrets.items()]
    for f in report.failures:
        lines.append(f"  - {f}")
    lines.append(f"{report.verdict} ({report.seconds} s, exit {report.exit_code})")
    return "\n".join(lines) + "\n"


def upgrade_gate_command(from_version: str, to_version: str, env_path: str | Path | None = None,
                         from_config: str = "harness", break_mode: str = "none", json_out: bool = False) -> int:
    """The body of `barbican-harness upgrade-gate`: prints the summary (or the JSON report)
    and returns the exit code (0 PASS, 1 FAIL, 2 ERROR)."""
    import logging

    from rich.console import Console

    # python-barbicanclient logs every 5xx answer; the gate reports them itself.
    logging.getLogger("barbicanclient").setLevel(logging.CRITICAL)
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    report = run_gate(from_version, to_version, env_path, from_config=from_config, break_mode=break_mode,
                      echo=lambda msg: err.print(msg, markup=False))
    from harness.redact import mask

    if json_out:
        print(mask(json.dumps(report.to_dict(), indent=2)))
    else:
        print(mask(summary_text(report)), end="")
    return report.exit_code


# Everything installed in each release's venv (`pip freeze`): the series' upper-constraints
# (openstack/requirements) as resolved on CPython 3.11, with the overrides named in RELEASES.
# fmt: off
_PINS = {
    "14.0.0": """
alembic==1.7.6 amqp==5.0.9 attrs==21.4.0 autopage==0.5.0 barbican==14.0.0 bcrypt==3.2.0
beautifulsoup4==4.10.0 cachetools==8.0.2 castellan==3.10.2 certifi==2026.10.19.post1 cffi==1.15.0
charset-normalizer==2.0.12 cliff==3.10.1 cmd2==2.4.0 cryptography==36.0.1 debtcollector==2.5.0
decorator==5.3.1 dnspython==2.1.0 dogpile.cache==1.1.5 enum-compat==0.0.3 eventlet==0.33.0 extras==1.0.0
fasteners==0.17.3 fixtures==3.0.0 futurist==2.4.0 greenlet==2.0.1 idna==3.3 iso8601==1.0.2 Jinja2==3.0.3
jsonschema==3.2.0 keystoneauth1==4.5.0 keystonemiddleware==9.4.0 kombu==5.2.4 ldap3==2.9.1 logutils==0.3.5
Mako==1.1.6 MarkupSafe==3.0.4 msgpack==1.0.3 netaddr==0.8.0 netifaces==0.11.0 os-service-types==1.7.0
oslo.cache==2.10.1 oslo.concurrency==4.5.0 oslo.config==8.8.1 oslo.context==4.1.0 oslo.db==11.2.0
oslo.i18n==5.1.0 oslo.log==4.7.0 oslo.messaging==12.13.3 oslo.metrics==0.4.0 oslo.middleware==4.5.1
oslo.policy==3.11.0 oslo.serialization==4.3.0 oslo.service==2.8.0 oslo.upgradecheck==1.5.0
oslo.utils==4.12.4 oslo.versionedobjects==2.6.0 packaging==21.3 Paste==3.5.0 PasteDeploy==2.1.1 pbr==5.8.1
pecan==1.4.1 prettytable==3.17.0 prometheus-client==0.13.1 pyasn1==0.4.8 pycadf==3.1.1 pycparser==2.21
pyinotify==0.9.6 PyKMIP==0.10.0 PyMySQL==1.0.2 pyOpenSSL==22.0.0 pyparsing==3.0.7 pyperclip==1.8.2
pyrsistent==0.20.0 python-barbicanclient==5.3.0 python-dateutil==2.8.2 python-keystoneclient==4.4.0
pytz==2021.3 pyuwsgi==2.0.30.post1 PyYAML==6.0 repoze.lru==0.7 requests==2.27.1 rfc3986==1.5.0 Routes==2.5.1
six==1.16.0 soupsieve==2.3.1 sqlalchemy-migrate==0.13.0 SQLAlchemy==1.4.31 sqlparse==0.4.2 statsd==3.3.0
stevedore==3.5.2 Tempita==0.5.2 testresources==2.0.1 testscenarios==0.5.0 testtools==2.5.0 urllib3==1.26.8
vine==5.0.0 waitress==2.0.0 wcwidth==0.2.5 WebOb==1.8.7 WebTest==3.0.0 wrapt==1.14.1 yappi==1.4.0
""",
    "15.0.0": """
alembic==1.8.1 amqp==5.1.1 attrs==22.1.0 autopage==0.5.1 barbican==15.0.0 bcrypt==4.0.0 cachetools==5.2.0
castellan==4.0.0 certifi==2026.10.19.post1 cffi==1.15.1 charset-normalizer==2.1.1 cliff==4.0.0 cmd2==2.4.2
cryptography==36.0.2 debtcollector==2.5.0 decorator==5.1.1 dnspython==2.2.1 dogpile.cache==1.1.8
enum-compat==0.0.3 eventlet==0.33.1 extras==1.0.0 fasteners==0.17.3 fixtures==4.0.1 futurist==2.4.1
greenlet==2.0.1 idna==3.3 importlib-metadata==4.12.0 iso8601==1.0.2 Jinja2==3.1.2 jsonschema==4.14.0
keystoneauth1==5.0.1 keystonemiddleware==10.1.1 kombu==5.2.4 ldap3==2.9.1 logutils==0.3.5 Mako==1.2.2
MarkupSafe==2.1.1 microversion-parse==1.0.1 msgpack==1.0.4 netaddr==0.8.0 netifaces==0.11.0
os-service-types==1.7.0 oslo.cache==3.2.0 oslo.concurrency==5.0.1 oslo.config==9.0.0 oslo.context==5.0.0
oslo.db==12.1.2 oslo.i18n==5.1.0 oslo.log==5.0.0 oslo.messaging==14.0.3 oslo.metrics==0.5.1
oslo.middleware==5.0.0 oslo.policy==4.0.0 oslo.serialization==5.0.0 oslo.service==3.0.0
oslo.upgradecheck==2.0.0 oslo.utils==6.0.2 oslo.versionedobjects==3.0.1 packaging==23.1 Paste==3.5.2
PasteDeploy==2.1.1 pbr==5.10.0 pecan==1.4.2 prettytable==3.4.1 prometheus-client==0.14.1 pyasn1==0.4.8
pycadf==3.1.1 pycparser==2.21 pyinotify==0.9.6 PyKMIP==0.10.0 PyMySQL==1.0.2 pyOpenSSL==22.0.0
pyparsing==3.0.9 pyperclip==1.8.2 pyrsistent==0.18.1 python-barbicanclient==5.4.0 python-dateutil==2.8.2
python-keystoneclient==5.0.1 pytz==2022.2.1 pyuwsgi==2.0.30.post1 PyYAML==6.0 repoze.lru==0.7
requests==2.28.1 rfc3986==1.5.0 Routes==2.5.1 six==1.16.0 sqlalchemy-migrate==0.13.0 SQLAlchemy==1.4.40
sqlparse==0.4.2 statsd==3.3.0 stevedore==4.0.2 Tempita==0.5.2 testresources==2.0.1 testscenarios==0.5.0
testtools==2.5.0 urllib3==1.26.12 vine==5.0.0 wcwidth==0.2.5 WebOb==1.8.7 wrapt==1.14.1 yappi==1.4.0
zipp==3.8.1
""",
    "16.0.0": """
alembic==1.8.1 amqp==5.1.1 attrs==22.1.0 autopage==0.5.1 barbican==16.0.0 bcrypt==4.0.0 cachetools==5.2.0
castellan==4.1.0 certifi==2026.10.19.post1 cffi==1.15.1 charset-normalizer==2.1.1 cliff==4.2.0 cmd2==2.4.2
cryptography==38.0.2 debtcollector==2.5.0 decorator==5.1.1 dnspython==2.2.1 dogpile.cache==1.1.8
enum-compat==0.0.3 eventlet==0.33.1 extras==1.0.0 fasteners==0.18 fixtures==4.0.1 futurist==2.4.1
greenlet==1.1.3 idna==3.4 importlib-metadata==5.0.0 iso8601==1.1.0 Jinja2==3.1.2 jsonschema==4.16.0
keystoneauth1==5.1.3 keystonemiddleware==10.2.0 kombu==5.2.4 ldap3==2.9.1 logutils==0.3.5 Mako==1.2.3
MarkupSafe==2.1.1 microversion-parse==1.0.1 msgpack==1.0.4 netaddr==0.8.0 netifaces==0.11.0
os-service-types==1.7.0 oslo.cache==3.3.1 oslo.concurrency==5.1.1 oslo.config==9.1.1 oslo.context==5.1.1
oslo.db==12.3.3 oslo.i18n==6.0.0 oslo.log==5.2.1 oslo.messaging==14.2.5 oslo.metrics==0.6.0
oslo.middleware==5.1.1 oslo.policy==4.1.1 oslo.serialization==5.1.2 oslo.service==3.1.2
oslo.upgradecheck==2.1.1 oslo.utils==6.1.0 oslo.versionedobjects==3.1.0 packaging==23.1 Paste==3.5.2
PasteDeploy==2.1.1 pbr==5.11.1 pecan==1.4.2 prettytable==3.4.1 prometheus-client==0.14.1 pyasn1==0.4.8
pycadf==3.1.1 pycparser==2.21 pyinotify==0.9.6 PyKMIP==0.10.0 PyMySQL==1.0.2 pyOpenSSL==22.1.0
pyparsing==3.0.9 pyperclip==1.8.2 pyrsistent==0.18.1 python-barbicanclient==5.5.0 python-dateutil==2.8.2
python-keystoneclient==5.1.0 pytz==2022.4 pyuwsgi==2.0.30.post1 PyYAML==6.0 repoze.lru==0.7 requests==2.28.1
rfc3986==1.5.0 Routes==2.5.1 six==1.16.0 sqlalchemy-migrate==0.13.0 SQLAlchemy==1.4.41 sqlparse==0.4.3
statsd==3.3.0 stevedore==5.0.0 Tempita==0.5.2 testresources==2.0.1 testscenarios==0.5.0 testtools==2.5.0
urllib3==1.26.12 vine==5.0.0 wcwidth==0.2.5 WebOb==1.8.7 wrapt==1.14.1 yappi==1.4.0 zipp==3.8.1
""",
    "17.0.0": """
alembic==1.9.4 amqp==5.1.1 attrs==23.1.0 autopage==0.5.1 barbican==17.0.0 bcrypt==4.0.1 cachetools==5.3.0
castellan==4.3.0 certifi==2026.10.19.post1 cffi==1.15.1 charset-normalizer==3.1.0 cliff==4.3.0 cmd2==2.4.3
cryptography==40.0.2 debtcollector==2.5.0 decorator==5.1.1 dnspython==2.3.0 dogpile.cache==1.1.8
enum-compat==0.0.3 eventlet==0.33.3 fasteners==0.18 fixtures==4.0.1 futurist==2.4.1 greenlet==2.0.2
idna==3.4 importlib-metadata==6.0.1 iso8601==1.1.0 Jinja2==3.1.2 jsonschema==4.17.3 keystoneauth1==5.3.1
keystonemiddleware==10.4.1 kombu==5.2.4 ldap3==2.9.1 logutils==0.3.5 Mako==1.2.4 MarkupSafe==2.1.2
microversion-parse==1.0.1 msgpack==1.0.5 netaddr==0.8.0 netifaces==0.11.0 os-service-types==1.7.0
oslo.cache==3.5.0 oslo.concurrency==5.2.0 oslo.config==9.2.0 oslo.context==5.2.0 oslo.db==14.1.1
oslo.i18n==6.1.1 oslo.log==5.3.2 oslo.messaging==14.4.2 oslo.metrics==0.7.0 oslo.middleware==5.2.0
oslo.policy==4.2.1 oslo.serialization==5.2.1 oslo.service==3.2.1 oslo.upgradecheck==2.2.0 oslo.utils==6.2.1
oslo.versionedobjects==3.2.0 packaging==23.1 Paste==3.5.2 PasteDeploy==3.0.1 pbr==5.11.1 pecan==1.4.2
prettytable==3.7.0 prometheus-client==0.16.0 pyasn1==0.4.8 pycadf==3.1.1 pycparser==2.21 pyinotify==0.9.6
PyKMIP==0.10.0 PyMySQL==1.0.3 pyOpenSSL==23.1.1 pyparsing==3.0.9 pyperclip==1.8.2 pyrsistent==0.19.3
python-barbicanclient==5.6.1 python-dateutil==2.8.2 python-keystoneclient==5.2.0 pytz==2023.3
pyuwsgi==2.0.30.post1 PyYAML==6.0 repoze.lru==0.7 requests==2.28.2 rfc3986==2.0.0 Routes==2.5.1 six==1.16.0
SQLAlchemy==1.4.41 statsd==4.0.1 stevedore==5.1.0 testresources==2.0.1 testscenarios==0.5.0 testtools==2.6.0
tzdata==2023.3 urllib3==1.26.15 vine==5.0.0 wcwidth==0.2.6 WebOb==1.8.7 wrapt==1.15.0 yappi==1.4.0
zipp==3.15.0
""",
    "18.0.0": """
alembic==1.9.4 amqp==5.2.0 attrs==23.2.0 autopage==0.5.2 barbican==18.0.0 bcrypt==4.0.1 cachetools==5.3.2
castellan==5.0.0 certifi==2026.10.19.post1 cffi==1.16.0 charset-normalizer==3.3.2 cliff==4.6.0 cmd2==2.4.3
cryptography==42.0.4 debtcollector==3.0.0 decorator==5.1.1 dnspython==2.5.0 dogpile.cache==1.3.1
enum-compat==0.0.3 eventlet==0.35.1 fasteners==0.19 futurist==3.0.0 greenlet==3.0.3 idna==3.6 iso8601==2.1.0
Jinja2==3.1.3 jsonschema-specifications==2023.12.1 jsonschema==4.19.2 keystoneauth1==5.6.1
keystonemiddleware==10.6.0 kombu==5.3.5 ldap3==2.9.1 logutils==0.3.5 Mako==1.3.2 MarkupSafe==2.1.5
microversion-parse==1.0.1 msgpack==1.0.7 netaddr==0.10.1 netifaces==0.11.0 os-service-types==1.7.0
oslo.cache==3.7.0 oslo.concurrency==6.0.0 oslo.config==9.4.0 oslo.context==5.5.0 oslo.db==15.0.0
oslo.i18n==6.3.0 oslo.log==5.5.1 oslo.messaging==14.7.2 oslo.metrics==0.8.0 oslo.middleware==6.1.0
oslo.policy==4.3.0 oslo.serialization==5.4.1 oslo.service==3.4.1 oslo.upgradecheck==2.3.0 oslo.utils==7.1.0
oslo.versionedobjects==3.3.0 packaging==23.2 Paste==3.7.1 PasteDeploy==3.1.0 pbr==6.0.0 pecan==1.5.1
prettytable==3.9.0 prometheus_client==0.20.0 pyasn1==0.5.1 pycadf==3.1.1 pycparser==2.21 pyinotify==0.9.6
PyJWT==2.8.0 PyKMIP==0.10.0 PyMySQL==1.1.0 pyOpenSSL==24.0.0 pyparsing==3.1.1 pyperclip==1.8.2
python-barbicanclient==5.7.0 python-dateutil==2.8.2 python-keystoneclient==5.4.0 pytz==2024.1
pyuwsgi==2.0.30.post1 PyYAML==6.0.1 referencing==0.33.0 repoze.lru==0.7 requests==2.31.0 rfc3986==2.0.0
Routes==2.5.1 rpds-py==0.18.0 six==1.16.0 SQLAlchemy==1.4.51 statsd==4.0.1 stevedore==5.2.0
testresources==2.0.1 testscenarios==0.5.0 testtools==2.7.1 tzdata==2024.1 urllib3==1.26.18 vine==5.1.0
wcwidth==0.2.13 WebOb==1.8.7 wrapt==1.16.0 yappi==1.6.0
""",
    "19.0.0": """
alembic==1.13.2 amqp==5.2.0 attrs==24.2.0 autopage==0.5.2 barbican==19.0.0 bcrypt==4.0.1 cachetools==5.5.0
castellan==5.1.1 certifi==2026.10.19.post1 cffi==1.17.0 charset-normalizer==3.3.2 cliff==4.7.0 cmd2==2.4.3
cryptography==42.0.8 debtcollector==3.0.0 decorator==5.1.1 dnspython==2.6.1 dogpile.cache==1.3.3
enum-compat==0.0.3 eventlet==0.36.1 fasteners==0.19 futurist==3.0.0 greenlet==3.0.3 idna==3.8 iso8601==2.1.0
Jinja2==3.1.4 jsonschema-specifications==2023.12.1 jsonschema==4.19.2 keystoneauth1==5.8.1
keystonemiddleware==10.7.2 kombu==5.4.0 ldap3==2.9.1 logutils==0.3.5 Mako==1.3.5 MarkupSafe==2.1.5
microversion-parse==2.0.0 msgpack==1.0.8 netaddr==0.10.1 netifaces==0.11.0 os-service-types==1.7.0
oslo.cache==3.8.0 oslo.concurrency==6.1.0 oslo.config==9.6.1 oslo.context==5.6.0 oslo.db==16.0.0
oslo.i18n==6.4.0 oslo.log==6.1.2 oslo.messaging==14.9.3 oslo.metrics==0.9.0 oslo.middleware==6.2.0
oslo.policy==4.4.0 oslo.serialization==5.5.0 oslo.service==3.5.0 oslo.upgradecheck==2.4.0 oslo.utils==7.3.0
oslo.versionedobjects==3.4.0 packaging==24.1 Paste==3.10.1 PasteDeploy==3.1.0 pbr==6.1.0 pecan==1.5.1
prettytable==3.11.0 prometheus_client==0.20.0 pyasn1==0.6.0 pycadf==3.1.1 pycparser==2.22 PyJWT==2.9.0
PyKMIP==0.10.0 PyMySQL==1.1.1 pyparsing==3.1.2 pyperclip==1.9.0 python-barbicanclient==7.0.0
python-dateutil==2.9.0.post0 python-keystoneclient==5.5.0 pytz==2024.1 pyuwsgi==2.0.30.post1 PyYAML==6.0.2
referencing==0.35.1 repoze.lru==0.7 requests==2.32.3 rfc3986==2.0.0 Routes==2.5.1 rpds-py==0.20.0
six==1.16.0 SQLAlchemy==2.0.32 statsd==4.0.1 stevedore==5.3.0 testresources==2.0.1 testscenarios==0.5.0
testtools==2.7.2 typing_extensions==4.12.2 tzdata==2024.1 urllib3==1.26.19 vine==5.1.0 wcwidth==0.2.13
WebOb==1.8.8 wrapt==1.16.0 yappi==1.6.0
""",
    "20.0.0": """
alembic==1.14.1 amqp==5.3.1 attrs==25.1.0 autopage==0.5.2 barbican==20.0.0 bcrypt==4.0.1 cachetools==5.5.2
castellan==5.2.1 certifi==2026.10.19.post1 cffi==1.17.1 charset-normalizer==3.4.1 cliff==4.9.1 cmd2==2.5.11
cryptography==43.0.3 debtcollector==3.0.0 decorator==5.1.1 dnspython==2.7.0 dogpile.cache==1.3.4
enum-compat==0.0.3 eventlet==0.39.0 fasteners==0.19 futurist==3.1.0 greenlet==3.1.1 idna==3.10
iso8601==2.1.0 Jinja2==3.1.5 jsonschema-specifications==2024.10.1 jsonschema==4.23.0 keystoneauth1==5.10.0
keystonemiddleware==10.9.1 kombu==5.4.2 ldap3==2.9.1 logutils==0.3.5 Mako==1.3.9 MarkupSafe==3.0.2
microversion-parse==2.0.0 msgpack==1.1.0 netaddr==1.3.0 os-service-types==1.7.0 oslo.cache==3.10.2
oslo.concurrency==7.1.0 oslo.config==9.7.2 oslo.context==5.7.1 oslo.db==17.2.1 oslo.i18n==6.5.1
oslo.log==7.1.0 oslo.messaging==16.1.2 oslo.metrics==0.11.0 oslo.middleware==6.3.1 oslo.policy==4.5.1
oslo.serialization==5.7.0 oslo.service==4.1.2 oslo.upgradecheck==2.5.0 oslo.utils==8.2.0
oslo.versionedobjects==3.6.0 packaging==24.2 Paste==3.10.1 PasteDeploy==3.1.0 pbr==7.0.0 pecan==1.5.1
prettytable==3.14.0 prometheus_client==0.21.1 psutil==7.0.0 pyasn1==0.6.0 pycadf==4.0.1 pycparser==2.22
PyJWT==2.10.1 PyKMIP==0.10.0 PyMySQL==1.1.1 pyparsing==3.2.1 pyperclip==1.9.0 python-barbicanclient==7.1.0
python-dateutil==2.9.0.post0 python-keystoneclient==5.6.0 pyuwsgi==2.0.30.post1 PyYAML==6.0.2
referencing==0.36.2 repoze.lru==0.7 requests==2.32.3 rfc3986==2.0.0 Routes==2.5.1 rpds-py==0.23.1
six==1.17.0 SQLAlchemy==2.0.38 statsd==4.0.1 stevedore==5.4.1 testresources==2.0.1 testscenarios==0.5.0
testtools==2.7.2 typing_extensions==4.12.2 tzdata==2025.1 urllib3==1.26.20 vine==5.1.0 wcwidth==0.2.13
WebOb==1.8.9 wrapt==1.17.2 yappi==1.6.10
""",
    "21.0.0": """
alembic==1.16.4 amqp==5.3.1 attrs==25.3.0 autopage==0.5.2 barbican==21.0.0 bcrypt==4.0.1 cachetools==5.5.2
castellan==5.4.1 certifi==2026.10.19.post1 cffi==1.17.1 charset-normalizer==3.4.2 cliff==4.11.0 cmd2==2.7.0
cotyledon==2.0.0 cryptography==43.0.3 debtcollector==3.0.0 decorator==5.2.1 dnspython==2.7.0
dogpile.cache==1.4.0 enum-compat==0.0.3 eventlet==0.40.2 fasteners==0.19 futurist==3.2.1 greenlet==3.2.3
idna==3.10 iso8601==2.1.0 Jinja2==3.1.6 jsonschema-specifications==2025.4.1 jsonschema==4.25.0
keystoneauth1==5.12.0 keystonemiddleware==10.12.1 kombu==5.5.4 Mako==1.3.10 markdown-it-py==3.0.0
MarkupSafe==3.0.2 mdurl==0.1.2 microversion-parse==2.0.0 msgpack==1.1.1 netaddr==1.3.0
os-service-types==1.8.0 oslo.cache==3.12.0 oslo.concurrency==7.2.0 oslo.config==10.0.0 oslo.context==6.1.0
oslo.db==17.4.0 oslo.i18n==6.6.0 oslo.log==7.2.1 oslo.messaging==17.1.0 oslo.metrics==0.13.0
oslo.middleware==6.6.0 oslo.policy==4.6.0 oslo.serialization==5.8.0 oslo.service==4.3.0
oslo.upgradecheck==2.6.0 oslo.utils==9.1.0 oslo.versionedobjects==3.8.0 packaging==25.0 Paste==3.10.1
PasteDeploy==3.1.0 pbr==7.0.1 pecan==1.7.0 prettytable==3.16.0 prometheus_client==0.22.1 psutil==7.0.0
pycadf==4.0.1 pycparser==2.22 Pygments==2.19.2 PyJWT==2.10.1 PyKMIP==0.10.0 PyMySQL==1.1.1 pyparsing==3.2.3
pyperclip==1.9.0 python-barbicanclient==7.2.0 python-dateutil==2.9.0.post0 python-keystoneclient==5.7.0
pyuwsgi==2.0.30.post1 PyYAML==6.0.2 referencing==0.36.2 repoze.lru==0.7 requests==2.32.4 rfc3986==2.0.0
rich-argparse==1.7.1 rich==14.1.0 Routes==2.5.1 rpds-py==0.26.0 setproctitle==1.3.6 six==1.17.0
SQLAlchemy==2.0.42 statsd==4.0.1 stevedore==5.5.0 testresources==2.0.2 testscenarios==0.5.0 testtools==2.7.2
typing_extensions==4.14.1 tzdata==2025.2 urllib3==1.26.20 vine==5.1.0 wcwidth==0.2.13 WebOb==1.8.9
wrapt==1.17.2 yappi==1.6.10
""",
    "22.0.0": """
alembic==1.18.4 amqp==5.3.1 attrs==25.4.0 autopage==0.6.0 barbican==22.0.0 bcrypt==5.0.0 cachetools==7.0.1
castellan==5.6.0 certifi==2026.10.19.post1 cffi==2.0.0 charset-normalizer==3.4.4 cliff==4.13.3 cmd2==3.2.0
cotyledon==2.2.0 cryptography==43.0.3 debtcollector==3.0.0 decorator==5.2.1 dnspython==2.8.0
dogpile.cache==1.5.0 enum-compat==0.0.3 eventlet==0.40.4 fasteners==0.20 futurist==3.2.1 greenlet==3.3.2
idna==3.11 iso8601==2.1.0 Jinja2==3.1.6 jsonschema-specifications==2025.9.1 jsonschema==4.26.0
keystoneauth1==5.13.1 keystonemiddleware==12.0.0 kombu==5.6.2 Mako==1.3.10 markdown-it-py==4.0.0
MarkupSafe==3.0.3 mdurl==0.1.2 microversion_parse==2.1.0 msgpack==1.1.2 netaddr==1.3.0
os-service-types==1.8.2 oslo.cache==4.1.1 oslo.concurrency==7.4.1 oslo.config==10.3.0 oslo.context==6.3.0
oslo.db==18.0.0 oslo.i18n==6.7.2 oslo.log==8.1.0 oslo.messaging==17.3.0 oslo.metrics==0.15.1
oslo.middleware==8.0.0 oslo.policy==5.0.0 oslo.serialization==5.9.1 oslo.service==4.5.1
oslo.upgradecheck==2.7.1 oslo.utils==10.0.1 oslo.versionedobjects==3.9.0 packaging==26.0 Paste==3.10.1
PasteDeploy==3.1.0 pbr==7.0.3 pecan==1.7.0 prettytable==3.17.0 prometheus_client==0.24.1 psutil==7.2.2
pycadf==4.0.1 pycparser==3.0 Pygments==2.19.2 PyJWT==2.11.0 PyKMIP==0.10.0 PyMySQL==1.1.2 pyparsing==3.3.2
pyperclip==1.11.0 python-barbicanclient==7.3.0 python-dateutil==2.9.0.post0 python-keystoneclient==5.8.0
pyuwsgi==2.0.30.post1 PyYAML==6.0.3 referencing==0.37.0 repoze.lru==0.7 requests==2.32.5 rfc3986==2.0.0
rich-argparse==1.7.2 rich==14.3.3 Routes==2.5.1 rpds-py==0.30.0 setproctitle==1.3.7 six==1.17.0
SQLAlchemy==2.0.46 statsd==4.0.1 stevedore==5.7.0 testresources==2.0.2 testscenarios==0.5.0 testtools==2.8.5
typing_extensions==4.15.0 tzdata==2025.3 urllib3==2.6.3 vine==5.1.0 wcwidth==0.6.0 WebOb==1.8.9 wrapt==2.1.1
yappi==1.7.3
""",
}
# fmt: on
