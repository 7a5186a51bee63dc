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
pins only).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
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
# With --barbican-run every conformance test belongs to one xdist group (one environment,
# project-wide state such as quotas), so one worker is what `-n 2 --dist loadgroup` would
# give; as long as conformance/conftest.py adds that group after xdist has read the groups
# (its pytest_collection_modifyitems is not tryfirst), `-n 2` spreads the tests over two
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
    # Space-separated name==version: everything installed in the venv (`pip freeze`), from
    # the series' upper-constraints (openstack/requirements) resolved on CPython 3.11.
    pins: str = ""
    # Why this release does not run here (measured); empty when it works.
    broken: str = ""


# fmt: off
RELEASES: dict[str, Release] = {r.version: r for r in [
    Release("23.0.0", "2026.2"),
]}
# fmt: on


def release(version: str) -> Release:
    if version not in RELEASES:
        known = ", ".join(sorted(RELEASES, key=_vkey))
        raise HarnessError(f"no pins recorded for Barbican {version}; known releases: {known} "
                           f"(add one to harness/upgrade.py RELEASES)")
    rel = RELEASES[version]
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
                                     "installed": dt.datetime.now(dt.timezone.utc).isoformat(),
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
            capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir(),
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
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise HarnessError(f"{' '.join(argv[:6])} ...: stopped after {timeout:.0f} s (log: {log_path})") from None
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
print("FACTS " + json.dumps({"kek_default": d, "legacy_sql_connection": "sql_connection" in conf}))
"""


def probe_release(venv: BarbicanVenv) -> BarbicanVenv:
    """What the gate needs to know about a release, asked of its own code: simple_crypto's
    built-in default KEK ([] since 21.0.0) and whether the database URL is still
    [DEFAULT] sql_connection (before 18.0.0) rather than [database] connection."""
    with tempfile.TemporaryDirectory() as home:
        proc = subprocess.run([str(venv.python), "-c", _PROBE], capture_output=True, text=True, timeout=120,
                              cwd=home, env={**os.environ, "HOME": home, "PYTHONPATH": ""})
    for line in proc.stdout.splitlines():
        if line.startswith("FACTS "):
            facts = json.loads(line[len("FACTS "):])
            venv.kek_default = facts["kek_default"]
            venv.legacy_sql_connection = facts["legacy_sql_connection"]
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
                f"write the old default into [simple_crypto_plugin] explicitly (kek = <the old default>)")})
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
            r = env.session(e.role).get(node.url + path + "/payload", raise_exc=False, timeout=15,
                                        headers={"Accept": "application/octet-stream"})
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
        return {"ran": False, "ok": False, "reason": f"{suite} does not exist"}
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
    started: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat())
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
    from harness.context import fernet_key
    from harness.environment import new_run_id, runs_dir
    from harness.ledger import Ledger, LedgerChecker
    from harness import redact
    from harness.topology import load_topology

    echo = echo or (lambda msg: None)
    t0 = time.monotonic()
    env_path = Path(env_path or DEFAULT_ENV)
    topology = load_topology(env_path)
    report = GateReport(from_version, to_version, topology.name, from_config, break_mode)
    steps = _Steps(report, echo)
    env = None
    try:
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
            old_default, new_default = old.kek_default, new.kek_default
        if from_config == "default-kek" and not old_default:
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
        report.failures.append(str(exc))
        _finish(report, env, t0)
        return report
    except BaseException:
        _finish(report, env, t0, down_only=True)
        raise

    try:
        _gate_body(env, report, steps, old, new, old_default, new_default, from_overrides,
                   break_mode, conformance, echo, Ledger, LedgerChecker, fernet_key, redact)
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


def _gate_body(env, report, steps, old, new, old_default, new_default, from_overrides, break_mode,
               conformance, echo, Ledger, LedgerChecker, fernet_key, redact) -> None:
    provider = env.provider
    topo = env.ctx.topology
    ledger = Ledger(env.run_dir / "ledger", prefix=f"upgrade-{_rand.token_hex(3)}")

    with steps.step("seed secrets of every type on every store (ledger)"):
        try:
            seeded = seed_every_store(env, ledger)
        except Exception as exc:
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
    simple = sorted(ref for sid, ref in refs.items() if plugins.get(sid) == SIMPLE_CRYPTO_CLASS) if plugins else \
        sorted(ref for ref, b in seeded.backend.items() if b == "simple_crypto")

    to_overrides = dict(from_overrides)
    if break_mode == "kek-change":
        new_kek = fernet_key()
        redact.register(new_kek)
        to_overrides = {**to_overrides, "keks": [new_kek]}

    with steps.step("preflight: simple_crypto KEK continuity FROM → TO") as st:
        if "simple_crypto" in topo.backends:
            from_side = KekSide(old.version, {n.name: configured_keks(n.home / ".barbican" / "barbican.conf")
                                              for n in provider.nodes}, old_default)
            preview = {}
            with tempfile.TemporaryDirectory(dir=env.run_dir) as tmp:
                for n in provider.nodes:
                    conf = provider.config.render(Path(tmp) / n.name, n.name, n.url, to_overrides)
                    preview[n.name] = configured_keks(conf)
            to_side = KekSide(new.version, preview, new_default)
            report.preflight = kek_continuity(from_side, to_side, simple)
            for finding in report.preflight["findings"]:
                echo(("warning: " if finding.get("warning") else "preflight: ") + finding["message"])
            blocking = [f for f in report.preflight["findings"] if not f.get("warning")]
            if blocking:
                st["ok_override"] = False
                kinds = sorted({f["kind"] for f in blocking})
                report.failures.append(
                    f"preflight ({', '.join(kinds)}): {blocking[0]['message']}; secrets at risk: {', '.join(simple)}")
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
    with steps.step(f"barbican-manage db upgrade ({new.version}, same database)"):
        provider.nodes[0].manage("db", "upgrade", timeout=300)
        report.db_revision["to"] = alembic_revision(env)

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
            report.failures.append(f"TO {new.version} did not start: {start_errors}")
        wrong = {n: b for n, b in report.builds["to"].items() if b != new.version and n not in start_errors}
        if wrong:
            st["ok_override"] = False
            report.failures.append(f"TO nodes do not run Barbican {new.version}: {wrong}")

    with steps.step(f"verify every seeded secret on TO {new.version}") as st:
        result = LedgerChecker(ledger, env).check()
        report.verification = result.summary()
        per_node = read_through_every_node(env, ledger)
        report.verification["through_every_node"] = per_node
        unreadable = dict(result.unreadable)
        for ref in result.corrupted:
            unreadable.setdefault(ref, "payload differs")
        for ref, why in per_node.items():
            unreadable.setdefault(ref, "; ".join(f"{n}: {w}" for n, w in why.items()))
        report.unreadable_secrets = {
            ref: f"{why} [{seeded.store.get(ref, '?')}/{seeded.backend.get(ref, '?')}, {seeded.types.get(ref, '?')}]"
            for ref, why in sorted(unreadable.items())}
        if unreadable or not result.ok:
            st["ok_override"] = False
            by_backend = _count(seeded.backend.get(r, "?") for r in unreadable)
            report.failures.append(
                f"TO {new.version} cannot read back {len(unreadable)} of {result.acknowledged} secrets "
                f"written on FROM {old.version} ({', '.join(f'{b}: {n}' for b, n in sorted(by_backend.items()))}): "
                + ", ".join(sorted(unreadable)))
            if result.unexpected or result.resurrected:
                report.failures.append(f"unexpected {result.unexpected}, resurrected {result.resurrected}")

    with steps.step(f"new secrets on TO {new.version} (every node and store)") as st:
        stores = _store_refs(env) if topo.multiple_stores else None
        errors = new_secrets_work(env, stores)
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


def last_server_error(env) -> str:
    """The last ERROR line of the Barbican nodes' logs (the cause behind a 500)."""
    last = ("", "")
    for log in sorted(env.ctx.logs_dir.glob("barbican-*-app.log")):
        for line in log.read_text(errors="replace").splitlines():
            if " ERROR " in line and ("Exception" in line or "Error" in line) and ": " in line:
                stamp = line[:23]
                if stamp >= last[0]:
                    last = (stamp, line)
    if not last[1]:
        return "none logged"
    return re.sub(r"\[[^\]]*\] ", "", last[1])[:300]


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
    lines = [f"Upgrade gate: Barbican {report.from_version} → {report.to_version} on {report.topology}"
             f" (from-config {report.from_config}, break {report.break_mode})"]
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
    ver = report.verification
    if ver:
        lines.append(f"  TO read back {ver.get('verified', 0)}/{ver.get('acknowledged', 0)} byte-identical")
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
