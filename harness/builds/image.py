"""The Docker image of a Barbican build: the harness's python image plus the build's venv.

    tag = ensure_image(build, client, python_tag)     # barbican-harness/barbican-build:<hash>

The wheelhouse is made on the host from the build's venv (harness.builds.venvs: its
`pip freeze`, and the build's own wheel for anything that is not a PyPI release), so the
image has exactly the packages the local provider runs that build with; the image build
needs no network (environments/docker/barbican-build.Dockerfile). Built once per machine
and per (build, python image); the harness's own release runs on the python image itself.
"""

from __future__ import annotations

from pathlib import Path

from harness import images
from harness.builds.venvs import Build


def ensure_image(build: Build, client, python_tag: str, progress=None, log=None) -> str:
    """The image tag that runs `build` (python_tag itself for the harness's own build)."""
    if build.own:
        return python_tag
    local = [Path(build.wheel)] if build.wheel else []
    wheels = images.wheelhouse(log or (lambda line: None), str(build.python),
                               exclude=("barbican",) if local else (), local_wheels=local)
    return images.build_on(client, "barbican-build", python_tag, wheels, build.key, progress=progress, log=log)
