"""Barbican builds: which Barbican an environment runs, and the venv (or image) it runs from.

    build = resolve("git:../barbican@HEAD")      # installed once per machine, then cached
    Environment.up("environments/simple-crypto.yaml", barbican="wheel:dist/barbican-23.0.0-py3-none-any.whl")

Rooms:
  sources.py    parse a SOURCE (pypi:VERSION, wheel:PATH, sdist:PATH, git:PATH[@REF])
  releases.py   the releases that run here and the pins each installs with (constraints/*.txt)
  venvs.py      one cached venv per build; what a build is (Build) and what its code says
  image.py      the Docker image of a build (the docker provider's API nodes and worker)
"""

from __future__ import annotations

from pathlib import Path

from harness.builds.releases import own_version, version_key
from harness.builds.sources import Source, parse_source
from harness.builds.venvs import Build, install, own_build


def resolve(source: str | Source | None, base_dir: Path | None = None, log=None, what: str = "--barbican") -> Build:
    """The installed build of `source` (None: the harness's own Barbican)."""
    if source is None:
        return own_build()
    if not isinstance(source, Source):
        source = parse_source(source, base_dir, what)
    return install(source, log=log)


__all__ = ["Build", "Source", "install", "own_build", "own_version", "parse_source", "resolve", "version_key"]
