"""The Barbican releases this harness can run, and the pins each one installs with.

Measured here (CPython 3.11.7, Debian bookworm, SoftHSM 2.6.1, MariaDB 10.11): each
release installed from its series' OpenStack upper-constraints, then gated to 23.0.0.
The pins are data: harness/builds/constraints/<version>.txt (`pip freeze` of the venv
that worked). A build that is not a release (a wheel, an sdist, a git checkout) installs
with the pins of the release series it belongs to (same major version), and a build of
the harness's own series with the harness venv's own pins.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from harness.errors import HarnessError

CONSTRAINTS = Path(__file__).parent / "constraints"


@dataclass(frozen=True)
class Release:
    version: str
    series: str
    # Why this release does not run here (measured); empty when it works.
    broken: str = ""
    note: str = ""


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


def version_key(version: str) -> tuple:
    """Release order; a development version (23.0.1.dev3) sorts after its last release."""
    from packaging.version import InvalidVersion, Version

    try:
        return (Version(version),)
    except InvalidVersion:
        return (Version("0"),)


@lru_cache(maxsize=1)
def own_version() -> str:
    """The Barbican release the harness's venv holds (its own build)."""
    from importlib.metadata import version

    return version("barbican")


def latest() -> str:
    """The newest release this harness knows (`pypi:latest`)."""
    return max((r.version for r in RELEASES.values() if not r.broken), key=version_key)


def release(version: str) -> Release:
    """A release that runs here, or a HarnessError naming the known ones."""
    if version not in RELEASES:
        known = ", ".join(sorted((v for v, r in RELEASES.items() if not r.broken), key=version_key))
        raise HarnessError(f"Barbican {version}: no pins recorded for that release; releases that run here: "
                           f"{known} (pins: harness/builds/constraints/<version>.txt)")
    rel = RELEASES[version]
    if rel.broken:
        raise HarnessError(f"Barbican {version} ({rel.series}) does not run on Python 3.11 here: {rel.broken}")
    return rel


def pins_release(version: str) -> str | None:
    """The release whose pins a build of Barbican `version` installs with: its own, else
    its series' (same major version); None for the harness's own series or newer (master:
    the harness venv's pins). Raises, naming what runs here, when there are none."""
    major = version.split(".", 1)[0]
    own_major = own_version().split(".", 1)[0]
    if version in RELEASES and version != own_version():
        release(version)
        return version
    if major == own_major or (major.isdigit() and int(major) > int(own_major)):
        return None
    label = f"{major}.0.0"
    if label not in RELEASES or RELEASES[label].broken:
        known = sorted({v.split('.')[0] for v, r in RELEASES.items() if not r.broken}, key=int)
        raise HarnessError(f"Barbican {version}: no pins for its series ({major}.x); series that run here: "
                           f"{', '.join(known)}")
    return label


def constraints_for(version: str) -> tuple[str, list[str]]:
    """(where the pins come from, the pins) for a build of Barbican `version` (pins_release).
    Barbican itself is never among them."""
    label = pins_release(version)
    if label is None:
        newer = version.split(".", 1)[0] != own_version().split(".", 1)[0]
        return (f"the harness venv ({own_version()}{', the newest release known' if newer else ' series'})",
                harness_venv_pins())
    path = CONSTRAINTS / f"{label}.txt"
    pins = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return f"{label} ({RELEASES[label].series})", _without_barbican(pins)


@lru_cache(maxsize=1)
def harness_venv_pins() -> list[str]:
    """`pip freeze` of the harness venv: what its own Barbican was installed with."""
    out = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise HarnessError(f"pip freeze of the harness venv failed: {out.stderr.strip()[-300:]}")
    pins = [line.strip() for line in out.stdout.splitlines() if "==" in line and not line.startswith("#")]
    return _without_barbican(pins)


def _without_barbican(pins: list[str]) -> list[str]:
    return sorted((p for p in pins if p.split("==", 1)[0].strip().lower() not in ("barbican", "barbican-harness")),
                  key=str.lower)
