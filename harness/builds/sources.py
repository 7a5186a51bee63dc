"""Where a Barbican build comes from: the SOURCE of `--barbican SOURCE` and of a topology's
`barbican.source`.

    pypi:VERSION      a release from PyPI (pypi:latest: the newest one the harness knows)
    wheel:PATH        a wheel file (barbican-*.whl)
    sdist:PATH        a source archive (barbican-*.tar.gz)
    git:PATH[@REF]    a commit of a local git checkout (default HEAD; committed work only)
    overlay:DIR       a directory holding a `barbican` package (an altered copy of the
                      harness's own), run by the harness's venv with DIR first on PYTHONPATH;
                      local provider only, no install (what the behaviour tests alter)
    VERSION           short for pypi:VERSION

Parsing checks only what needs no network and no install (the file or checkout exists, the
ref names a commit); every problem is one line naming the source and what is allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.images import file_sha256

KINDS = ("pypi", "wheel", "sdist", "git", "overlay")
USAGE = "pypi:VERSION, wheel:PATH, sdist:PATH, git:PATH[@REF] or overlay:DIR"
_VERSION = re.compile(r"^\d+(\.\d+)*([.-]?(a|b|rc|dev|post)\d*)*$")


@dataclass(frozen=True)
class Source:
    kind: str
    spec: str  # canonical: kind:absolute-path[@commit] or pypi:version
    path: Path | None = None
    version: str | None = None  # known before installing: releases, and files named by version
    commit: str | None = None  # git sources
    ref: str | None = None
    digest: str | None = None  # wheel and sdist: sha256 of the file

    @property
    def key(self) -> str:
        """What its venv (and image) are cached by: the release, the file's content, the commit."""
        if self.kind == "pypi":
            return f"barbican-{self.version}"
        if self.kind == "git":
            return f"git-{self.commit[:16]}"
        if self.kind == "overlay":
            return f"overlay-{self.path.name}"
        return f"{self.kind}-{self.digest[:16]}"

    def describe(self) -> dict:
        return {"kind": self.kind, "source": self.spec, "path": str(self.path) if self.path else None,
                "ref": self.ref, "commit": self.commit, "sha256": self.digest}


def parse_source(text: str, base_dir: Path | None = None, what: str = "--barbican") -> Source:
    """A Source from its text; relative paths are taken from `base_dir` (default: the
    current directory)."""
    from harness.builds.releases import latest, pins_release

    raw = (text or "").strip()
    kind, sep, rest = raw.partition(":")
    if not sep:
        kind, rest = "pypi", raw
    if kind not in KINDS:
        raise HarnessError(f"{what} '{text}': unknown kind '{kind}'; use {USAGE}")
    if not rest:
        raise HarnessError(f"{what} '{text}': nothing after '{kind}:'; use {USAGE}")
    if kind == "pypi":
        version = latest() if rest == "latest" else rest
        if not _VERSION.match(version):
            raise HarnessError(f"{what} '{text}': '{rest}' is not a version (e.g. pypi:22.0.0, pypi:latest)")
        try:
            pins_release(version)  # a release that cannot run here is refused now, not after an install
        except HarnessError as exc:
            raise HarnessError(f"{what} '{text}': {exc}") from None
        return Source("pypi", f"pypi:{version}", version=version)
    if kind == "git":
        where, at, ref = rest.rpartition("@")
        if not at:
            where, ref = rest, ""
        return _git(Path(where), ref or "HEAD", base_dir, what, text)
    path = _path(Path(rest), base_dir)
    if kind == "overlay":
        if not (path / "barbican" / "__init__.py").is_file():
            raise HarnessError(f"{what} '{text}': {path} holds no barbican/__init__.py (an overlay is a directory "
                               "holding a copy of the barbican package)")
        from harness.builds.releases import own_version

        return Source("overlay", f"overlay:{path}", path=path, version=own_version())
    suffix = ".whl" if kind == "wheel" else ".tar.gz"
    if not path.is_file():
        raise HarnessError(f"{what} '{text}': no such file {path}")
    if not path.name.startswith("barbican-") or not path.name.endswith(suffix):
        raise HarnessError(f"{what} '{text}': expected a Barbican {kind} named barbican-VERSION...{suffix}, "
                           f"got {path.name}")
    version = path.name[len("barbican-"):-len(suffix)].split("-", 1)[0]
    return Source(kind, f"{kind}:{path}", path=path, version=version, digest=file_sha256(path))


def _path(path: Path, base_dir: Path | None) -> Path:
    path = path.expanduser()
    return (path if path.is_absolute() else (base_dir or Path.cwd()) / path).resolve()


def _git(where: Path, ref: str, base_dir: Path | None, what: str, text: str) -> Source:
    path = _path(where, base_dir)
    if not path.is_dir():
        raise HarnessError(f"{what} '{text}': no such directory {path}")
    try:
        top = _git_out(path, "rev-parse", "--show-toplevel")
        commit = _git_out(path, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except HarnessError as exc:
        raise HarnessError(f"{what} '{text}': {exc}") from None
    if not commit:
        raise HarnessError(f"{what} '{text}': '{ref}' names no commit in {path}")
    top_path = Path(top)
    if not (top_path / "setup.cfg").is_file() and not (top_path / "pyproject.toml").is_file():
        raise HarnessError(f"{what} '{text}': {top_path} is not a Python project (no setup.cfg or pyproject.toml)")
    return Source("git", f"git:{top_path}@{commit}", path=top_path, commit=commit, ref=ref)


def _git_out(path: Path, *args: str) -> str:
    from harness.procs import run

    proc = run(["git", "-C", str(path), *args], timeout=30, check=False, what=f"git {args[0]} in {path}",
               error=HarnessError)
    if proc.returncode != 0 and args[:2] != ("rev-parse", "--verify"):
        raise HarnessError(f"{path} is not a git checkout ({proc.stderr.strip()[:200]})")
    return proc.stdout.strip()
