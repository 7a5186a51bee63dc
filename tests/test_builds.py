"""Your Barbican build: an environment comes up on a wheel or on a commit of a git checkout,
records the build (version, commit) and proves each node runs it.

The wheel and the sdist are Barbican 23.0.0's from PyPI (pip's cache makes the download
cheap); the git checkout is made here from the sdist, tagged 23.0.0, with two commits of
its own on top. Commits are made with fixed names and dates, so the commit, and with it
the build's cached venv, is the same on every run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import psutil
import pytest

from harness.builds import parse_source
from harness.campaign import round_trips
from harness.environment import Environment
from harness.errors import HarnessError, TopologyError
from harness.topology import load_topology
from tests.conftest import topology

RELEASE = "23.0.0"
GIT_ENV = {"GIT_AUTHOR_NAME": "harness", "GIT_AUTHOR_EMAIL": "harness@example.invalid",
           "GIT_COMMITTER_NAME": "harness", "GIT_COMMITTER_EMAIL": "harness@example.invalid",
           "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
           "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}


def _download(tmp: Path, *args: str) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(tmp), *args,
                    f"barbican=={RELEASE}"], check=True, timeout=600, capture_output=True)
    [found] = [p for p in tmp.iterdir() if p.name.startswith("barbican-")]
    return found


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, timeout=120, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout.strip()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return _download(tmp_path_factory.mktemp("wheel"), "--only-binary", ":all:")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """Barbican's sdist as a git checkout: the release commit tagged 23.0.0, then two
    commits of ours (as a developer's branch has)."""
    sdist = _download(tmp_path_factory.mktemp("sdist"), "--no-binary", ":all:")
    root = tmp_path_factory.mktemp("checkout")
    with tarfile.open(sdist) as tar:
        tar.extractall(root, filter="data")
    [repo] = root.iterdir()
    # What pip's sdist has and a git checkout has not: pbr would take the version from them.
    (repo / "PKG-INFO").unlink()
    for info in repo.glob("*.egg-info"):
        subprocess.run(["rm", "-rf", str(info)], check=True)
    _git(repo, "init", "-q", "-b", "master")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", f"Barbican {RELEASE} as released")
    _git(repo, "tag", "-a", RELEASE, "-m", RELEASE)
    (repo / "barbican" / "harness_change.py").write_text('"""A change of the branch under test."""\nMARK = 1\n')
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "A change of our own")
    (repo / "barbican" / "harness_change.py").write_text('"""A change of the branch under test."""\nMARK = 2\n')
    _git(repo, "commit", "-q", "-am", "Another change of our own")
    return repo


def _node_programs(env) -> dict[str, str]:
    """API node → the program its process runs (the venv it comes from)."""
    return {p["name"]: psutil.Process(p["pid"]).cmdline()[1] for p in env.state["processes"]
            if p["name"].startswith("barbican-") and p["name"][len("barbican-"):].isdigit()}


def _assert_runs_build(env, kind: str, version: str) -> dict:
    build = env.state["build"]
    assert build["kind"] == kind and build["version"] == version and not build["own"], build
    assert env.state["node_versions"] == {n.name: version for n in env.nodes}
    assert env.barbican_versions() == env.state["node_versions"]
    for node, program in _node_programs(env).items():
        assert program.startswith(build["prefix"] + "/bin/"), (node, program)
    same, differ = round_trips(env)
    assert len(same) == len(env.nodes) ** 2 and not differ
    return build


@pytest.mark.integration
@pytest.mark.timeout(1800)  # a build's venv is installed on first use (minutes on a fresh machine)
@pytest.mark.xdist_group("builds")
def test_wheel_source_comes_up_and_round_trips(wheel):
    env = Environment.up(topology("simple-crypto"), barbican=f"wheel:{wheel}")
    try:
        build = _assert_runs_build(env, "wheel", RELEASE)
        assert build["source"] == f"wheel:{wheel}"
        assert build["key"] == "wheel-" + parse_source(f"wheel:{wheel}").digest[:16]
        assert build["commit"]  # pbr's record of the release commit, from the wheel
        assert env.summary()["build"] == build
    finally:
        env.down()


@pytest.mark.integration
@pytest.mark.timeout(1800)  # a build's venv is installed on first use (minutes on a fresh machine)
@pytest.mark.xdist_group("builds")
def test_git_source_comes_up_on_its_own_commit(checkout, tmp_path):
    """A topology naming git:PATH (relative to the file; HEAD): installed from a fresh clone
    at that commit; pbr versions it from the repository (two commits after the 23.0.0 tag)
    and every node says so."""
    head = _git(checkout, "rev-parse", "HEAD")
    topo = tmp_path / "simple-crypto-git.yaml"
    text = topology("simple-crypto").read_text().replace("  nodes: 2\n", f"  nodes: 2\n  source: "
                                                          f"git:{os.path.relpath(checkout, tmp_path)}\n")
    assert "source: git:" in text
    topo.write_text(text)
    env = Environment.up(topo)
    try:
        build = _assert_runs_build(env, "git", f"{RELEASE[:-1]}1.dev2")
        assert build["commit"] == head and build["source"] == f"git:{checkout}@{head}"
        change = subprocess.run([build["prefix"] + "/bin/python", "-c", "import barbican.harness_change as c; "
                                 "print(c.MARK)"], capture_output=True, text=True, timeout=60, cwd="/")
        assert change.stdout.strip() == "2", change.stderr
        state = json.loads((env.run_dir / "state.json").read_text())
        assert state["topology"]["barbican"]["source"] == build["source"]
        attached = Environment.attach(env.run_id)
        assert attached.ctx.barbican_build.prefix == build["prefix"]  # faults restart nodes on the build
    finally:
        env.down()


def test_sources_are_checked_before_anything_starts(tmp_path, checkout):
    """Each wrong source is one line naming it and what is allowed."""
    cases = {
        "ftp:x": "unknown kind 'ftp'", "pypi:": "nothing after", "pypi:twenty": "not a version",
        f"wheel:{tmp_path}/barbican-1.0-py3-none-any.whl": "no such file",
        f"sdist:{tmp_path}": "no such file",
        f"git:{tmp_path}": "not a git checkout", f"git:{checkout}@no-such-ref": "names no commit",
    }
    (tmp_path / "other.whl").write_bytes(b"x")
    cases[f"wheel:{tmp_path / 'other.whl'}"] = "barbican-VERSION"
    for text, expected in cases.items():
        with pytest.raises(HarnessError) as err:
            parse_source(text)
        assert expected in str(err.value) and "\n" not in str(err.value), (text, str(err.value))
    assert parse_source("22.0.0").spec == "pypi:22.0.0"
    assert parse_source(f"git:{checkout}@{RELEASE}").commit == _git(checkout, "rev-parse", f"{RELEASE}^{{commit}}")


def test_topology_source_field_is_validated(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nstores: [{name: s, backend: simple_crypto}]\nbarbican: {source: 'cvs:x'}\n")
    with pytest.raises(TopologyError) as err:
        load_topology(bad)
    assert "barbican.source" in str(err.value) and "git:PATH[@REF]" in str(err.value)
    good = tmp_path / "good.yaml"
    good.write_text("name: good\nstores: [{name: s, backend: simple_crypto}]\nbarbican: {source: 'pypi:22.0.0'}\n")
    assert load_topology(good).barbican.source == "pypi:22.0.0"


@pytest.mark.integration
@pytest.mark.timeout(1800)  # a build's venv is installed on first use (minutes on a fresh machine)
@pytest.mark.xdist_group("builds")
def test_gate_from_the_release_to_a_git_build(checkout):
    """The CI recipe's shape (README): the last release → a commit of a checkout. Every seeded
    secret reads back on the git build; the report names the commit. (Offline and without
    conformance here; the recipe adds --rolling.)"""
    from harness.upgrade.gate import run_gate
    from harness.upgrade.report import summary_text

    head = _git(checkout, "rev-parse", "HEAD")
    report = run_gate(["pypi:latest", f"git:{checkout}"], conformance=False)
    assert report.verdict == "PASS", summary_text(report)
    assert [b["kind"] for b in report.builds] == ["pypi", "git"] and report.builds[1]["commit"] == head
    [hop] = report.hops
    assert set(hop.versions.values()) == {f"{RELEASE[:-1]}1.dev2"}
    assert hop.verification["verified"] == hop.verification["acknowledged"] == report.seeded["count"]
    assert head[:12] in (Path(report.run_dir) / "upgrade-gate.txt").read_text()
