"""One venv per Barbican build, installed once per machine and cached.

    ~/.cache/barbican-harness/venvs/<key>/     key: barbican-<version> | wheel-<sha> |
                                                    sdist-<sha> | git-<commit>

A venv holds Barbican, pyuwsgi, PyMySQL and PyKMIP with the pins of the build's release
series (harness.builds.releases) and nothing of the harness: the harness's WSGI module
reaches it through PYTHONPATH (a directory holding only a `harness` link). Keystone,
MariaDB, SoftHSM ... always run from the harness's own venv and the machine.

An sdist or a git commit is first made into a wheel (`pip wheel`; for git, in a fresh
clone of the checkout at that commit, so pbr versions it from the repository's tags and
records the commit). Installs run under a per-key lock (pytest-xdist workers wait for the
first), with a timeout (BARBICAN_HARNESS_VENV_TIMEOUT, default 1200 s); a stamp file says
what was installed, so a changed pin set reinstalls.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import harness
from harness import procs
from harness.builds.releases import constraints_for, own_version
from harness.builds.sources import Source
from harness.errors import HarnessError

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "barbican-harness"
VENVS = CACHE / "venvs"
INSTALL_TIMEOUT = float(os.environ.get("BARBICAN_HARNESS_VENV_TIMEOUT", "1200"))
# What each build needs besides Barbican to run under the harness.
EXTRA_REQUIREMENTS = ("pyuwsgi", "PyMySQL", "pykmip")
STAMP = ".harness-build.json"


@dataclass
class Build:
    """An installed Barbican build: what it is and the venv that runs it."""

    source: str  # canonical source (harness.builds.sources)
    kind: str
    version: str  # what the build says it is (importlib metadata; GET /?build)
    prefix: str  # its venv
    key: str = ""
    own: bool = False  # the harness's own venv (shared with Keystone; no PYTHONPATH needed)
    commit: str | None = None  # the git commit it was built from (pbr's git_version for releases)
    constraints: str = ""  # whose pins it was installed with
    cached: bool = True
    install_seconds: float | None = None
    # Facts asked of its own code (probe): None until asked.
    kek_default: list[str] | None = None  # simple_crypto's built-in default KEK ([] since 21.0.0; public)
    legacy_sql_connection: bool = False  # database URL in [DEFAULT] sql_connection (before 18.0.0)
    p11_key_wrap_mechanism: bool = True  # p11_crypto has key_wrap_mechanism (20.0.0+)
    wheel: str | None = None  # the wheel it was installed from (not for PyPI releases)
    image: str | None = None  # the Docker image that runs it (docker provider)
    overlay: str | None = None  # a directory put first on PYTHONPATH (an altered barbican package)

    @property
    def bin_dir(self) -> Path:
        return Path(self.prefix) / "bin"

    def bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    @property
    def python(self) -> Path:
        return self.bin_dir / "python"

    @property
    def label(self) -> str:
        """How reports name it: the version, and where it came from when not a release."""
        if self.kind == "pypi":
            return self.version
        return f"{self.version} ({self.kind}{' ' + self.commit[:12] if self.commit and self.kind == 'git' else ''})"

    def environ(self, env: dict) -> dict:
        """A process environment for this build's programs (from the run's environment)."""
        if self.own and self.overlay:
            return {**env, "PYTHONPATH": os.pathsep.join(p for p in (self.overlay, env.get("PYTHONPATH")) if p)}
        if self.own:
            return env
        env = dict(env)
        env["PYTHONPATH"] = str(harness_link_dir(Path(self.prefix)))
        env.pop("VIRTUAL_ENV", None)
        return env

    def ensure_facts(self) -> "Build":
        if self.kek_default is None:
            facts = probe(self.python)
            self.kek_default = facts["kek_default"]
            self.legacy_sql_connection = facts["legacy_sql_connection"]
            self.p11_key_wrap_mechanism = facts["p11_key_wrap_mechanism"]
        return self

    def describe(self) -> dict:
        """What state files and reports record (the default KEK only as a fingerprint)."""
        out = {k: v for k, v in asdict(self).items() if k != "kek_default"}
        out["label"] = self.label
        if self.kek_default is not None:
            out["kek_default"] = ["sha256:" + hashlib.sha256(k.encode()).hexdigest()[:12] for k in self.kek_default]
        return out

    @classmethod
    def from_state(cls, data: dict) -> "Build":
        """A build recorded by describe() (a later CLI call on the same environment)."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "kek_default"}
        return cls(**known)


def own_build() -> Build:
    """The Barbican the harness's own venv holds."""
    from importlib.metadata import distribution

    commit = _pbr_commit(distribution("barbican").read_text("pbr.json"))
    return Build(f"pypi:{own_version()}", "pypi", own_version(), sys.prefix, key=f"barbican-{own_version()}",
                 own=True, commit=commit, constraints="the harness venv")


def harness_link_dir(prefix: Path) -> Path:
    """A directory holding only a `harness` link to this checkout, for PYTHONPATH."""
    return prefix / "harness-path"


def _link_harness(prefix: Path) -> None:
    path = harness_link_dir(prefix)
    path.mkdir(exist_ok=True)
    link = path / "harness"
    target = Path(harness.__file__).resolve().parent
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    tmp = path / f".harness.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def install(source: Source, log=None, timeout: float = INSTALL_TIMEOUT) -> Build:
    """The build of `source`: the harness's own venv when it is that release, else its
    cached venv (installed now when missing)."""
    log = log or (lambda msg: None)
    if source.kind == "pypi" and source.version == own_version():
        return own_build()
    if source.kind == "overlay":
        # Nothing to install: the harness's own venv runs the altered package first on its path.
        build = own_build()
        build.source, build.kind, build.key, build.overlay = source.spec, "overlay", source.key, str(source.path)
        return build
    prefix = VENVS / source.key
    VENVS.mkdir(parents=True, exist_ok=True)
    with locked(VENVS / f"{source.key}.lock", timeout + 120):
        build = _cached(source, prefix)
        if build is not None:
            _link_harness(prefix)
            return build
        log(f"installing Barbican from {source.spec} into {prefix} (once; cached)")
        start = time.monotonic()
        build = _install(source, prefix, log, timeout)
        build.cached, build.install_seconds = False, round(time.monotonic() - start, 1)
        packages = _package_names(build.python)
        stamp = {**asdict(build), "packages": packages, "digest": _digest(source, build.version, packages),
                 "installed": dt.datetime.now(dt.UTC).isoformat()}
        (prefix / STAMP).write_text(json.dumps(stamp, indent=1))
    _link_harness(prefix)
    return build


def _cached(source: Source, prefix: Path) -> Build | None:
    try:
        stamp = json.loads((prefix / STAMP).read_text())
        if stamp.get("digest") != _digest(source, stamp["version"], stamp["packages"]) \
                or not (prefix / "bin" / "python").exists():
            return None
    except (OSError, ValueError, KeyError, HarnessError):
        return None
    fields = {k: v for k, v in stamp.items() if k in Build.__dataclass_fields__}
    # The same build may be named another way (another path to the same commit or file).
    return Build(**{**fields, "source": source.spec, "cached": True, "install_seconds": None})


def _digest(source: Source, version: str, packages: list[str]) -> str:
    """What the venv was made from: the build, and the pins of the packages it holds (a pin
    of anything else, e.g. a new tool in the harness venv, does not make it stale)."""
    _, pins = constraints_for(version)
    held = set(packages)
    relevant = [p for p in pins if _canonical(p.split("==", 1)[0]) in held]
    text = f"{source.key}\n{version}\n" + "\n".join(relevant) + "\n" + " ".join(EXTRA_REQUIREMENTS)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _package_names(python: Path) -> list[str]:
    """The distributions a venv holds (canonical names)."""
    out = procs.run([str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                    timeout=120, what=f"pip list of {python}", error=HarnessError)
    return sorted(_canonical(d["name"]) for d in json.loads(out.stdout))


@contextlib.contextmanager
def locked(path: Path, timeout: float):
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


def _install(source: Source, prefix: Path, log, timeout: float) -> Build:
    shutil.rmtree(prefix, ignore_errors=True)
    log_path = VENVS / f"{source.key}.install.log"
    deadline = time.monotonic() + timeout
    try:
        wheel = None
        if source.kind == "pypi":
            requirement, version = f"barbican=={source.version}", source.version
        else:
            wheel = make_wheel(source, log_path, max(30.0, deadline - time.monotonic()))
            requirement, version = str(wheel), wheel.name.split("-")[1]
        label, pins = constraints_for(version)
        _run([_base_python(), "-m", "venv", str(prefix)], log_path, 120, "python -m venv")
        constraints = prefix / "harness-constraints.txt"
        constraints.write_text("\n".join(pins) + "\n")
        _run([str(prefix / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
              "--no-input", "-q", "-c", str(constraints), requirement, *EXTRA_REQUIREMENTS],
             log_path, max(30.0, deadline - time.monotonic()), f"pip install {requirement}")
        facts = probe(prefix / "bin" / "python")
        if facts["version"] != version:
            raise HarnessError(f"{source.spec}: installed, but the venv's Barbican is {facts['version']}, not {version}")
        commit = _pbr_commit(facts.get("pbr"))
        if source.commit and not (commit and source.commit.startswith(commit)):
            raise HarnessError(f"{source.spec}: the wheel pbr built says commit {commit}, not {source.commit[:12]}")
        return Build(source.spec, source.kind, version, str(prefix), key=source.key,
                     commit=source.commit or commit, constraints=label, kek_default=facts["kek_default"],
                     legacy_sql_connection=facts["legacy_sql_connection"],
                     p11_key_wrap_mechanism=facts["p11_key_wrap_mechanism"], wheel=str(wheel) if wheel else None)
    except BaseException:
        shutil.rmtree(prefix, ignore_errors=True)
        raise


def make_wheel(source: Source, log_path: Path, timeout: float) -> Path:
    """The build's wheel, kept next to the venvs (a Docker image of the build needs it):
    a copy of a wheel source; an sdist built; a git commit built in a fresh clone."""
    out = VENVS / "wheels" / source.key
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if source.kind == "wheel":
        shutil.copy2(source.path, out / source.path.name)
        return out / source.path.name
    with tempfile.TemporaryDirectory(dir=VENVS) as tmp:
        target = str(source.path)
        if source.kind == "git":
            clone = Path(tmp) / "src"
            _run(["git", "clone", "--quiet", "--no-checkout", str(source.path), str(clone)], log_path, 300,
                 "git clone")
            _run(["git", "-C", str(clone), "checkout", "--quiet", "--detach", source.commit], log_path, 300,
                 "git checkout")
            target = str(clone)
        _run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-input", "-q",
              "--no-deps", "-w", str(out), target], log_path, timeout, f"pip wheel {source.spec}")
    wheels = sorted(out.glob("barbican-*.whl"))
    if len(wheels) != 1:
        raise HarnessError(f"{source.spec}: pip wheel made {[w.name for w in wheels] or 'no barbican wheel'} "
                           f"(log {log_path})")
    return wheels[0]


def _run(argv: list[str], log_path: Path, timeout: float, what: str) -> None:
    """A long command of ours (venv, pip, git): output in `log_path`, a deadline, its
    whole process group stopped on the deadline or Ctrl-C (harness.procs.run)."""
    procs.run(argv, timeout=timeout, what=f"{what} (log {log_path})", log_path=log_path, cwd=tempfile.gettempdir(),
              error=HarnessError)


_PROBE = """
import json, sys
sys.argv = sys.argv[:1]
import importlib.metadata as m
import pyuwsgi  # noqa: F401 - the API nodes need it
import barbican.cmd.barbican_manage  # noqa: F401
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
print("FACTS " + json.dumps({"version": m.version("barbican"), "pbr": m.distribution("barbican").read_text("pbr.json"),
                             "kek_default": d, "legacy_sql_connection": "sql_connection" in conf,
                             "p11_key_wrap_mechanism": wrap}))
"""


def probe(python: Path) -> dict:
    """What the harness needs to know about a build, asked of its own code: its version and
    commit, simple_crypto's built-in default KEK ([] since 21.0.0), whether the database URL
    is still [DEFAULT] sql_connection (before 18.0.0) rather than [database] connection, and
    whether p11_crypto has key_wrap_mechanism (20.0.0+; SoftHSM needs CKM_AES_KEY_WRAP_PAD)."""
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "HOME": home}
        if Path(python).resolve() != Path(sys.executable).resolve():
            env["PYTHONPATH"] = ""
        proc = procs.run([str(python), "-c", _PROBE], timeout=120, cwd=home, env=env, check=False,
                         what=f"{python}: asking Barbican what it is", error=HarnessError)
    for line in proc.stdout.splitlines():
        if line.startswith("FACTS "):
            return json.loads(line[len("FACTS "):])
    raise HarnessError(f"cannot inspect the Barbican of {python}: {(proc.stderr or proc.stdout).strip()[-300:]}")


def _pbr_commit(pbr_json: str | None) -> str | None:
    try:
        return json.loads(pbr_json or "{}").get("git_version") or None
    except ValueError:
        return None
