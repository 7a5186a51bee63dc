"""Issue 11: the one conformance runner (harness.conformance_run) on a real environment:
counts come from the junit XML, an empty selection is an error (not a pass), and a run
past its deadline is killed whole (no pytest child left behind)."""

from __future__ import annotations

import psutil
import pytest

from harness.conformance_run import junit_counts, run_conformance

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("simple-crypto")]


def test_a_subset_passes_and_is_counted_from_junit(env_of, tmp_path):
    env = env_of("simple-crypto")
    result = run_conformance(env, ["conformance/api"], k="version", out_dir=tmp_path, timeout=600)
    assert result.ok, result.to_dict()
    assert result.counts["tests"] >= 3 and result.counts["failed"] == 0
    assert result.counts == junit_counts(tmp_path / "conformance.xml")[0]
    assert result.command.startswith("pytest conformance/api --barbican-run")


def test_nothing_selected_is_an_error_not_a_pass(env_of, tmp_path):
    env = env_of("simple-crypto")
    result = run_conformance(env, ["conformance/api"], k="no_test_has_this_name", out_dir=tmp_path, timeout=600)
    assert not result.ok and "pytest exited 5" in result.summary


def test_a_run_past_its_deadline_is_killed_whole(env_of, tmp_path):
    env = env_of("simple-crypto")
    result = run_conformance(env, ["conformance/api"], out_dir=tmp_path, name="deadline", timeout=3)
    assert not result.ok and "did not finish within 3 s" in result.summary
    junit = str(tmp_path / "deadline.xml")
    left = [p for p in psutil.process_iter(["cmdline"]) if junit in " ".join(p.info["cmdline"] or [])]
    assert left == []
