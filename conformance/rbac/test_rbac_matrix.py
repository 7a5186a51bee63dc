"""Barbican RBAC conformance: every operation × every actor, against the real service.

One test, parametrized over the operations and actors of `rbac_operations.py` (ids like
`secret:decrypt-reader`). Each case reads the expected outcome for the target's policy
mode (expected_legacy.yaml or expected_secure_rbac.yaml, derived from Barbican's policy
code by derive_expected.py), performs the operation as the actor through raw HTTP, and
checks the status, the body (the result of an allowed call; for a denied one Barbican's
"<Operation> attempt not allowed - please review your user/project privileges") and, for
operations that change something, that the change happened exactly when it was allowed.
"""

from __future__ import annotations

import allure
import pytest
from rbac_operations import ACTORS, OPS

from harness.known_bugs import known_bug

SEVERITY = {
    "blocker": allure.severity_level.BLOCKER,
    "critical": allure.severity_level.CRITICAL,
    "normal": allure.severity_level.NORMAL,
    "minor": allure.severity_level.MINOR,
    "trivial": allure.severity_level.TRIVIAL,
}
DENIED_TEXT = "attempt not allowed - please review your user/project privileges"
NO_MULTI_STORE_TEXT = "Multiple backends support is not enabled"

CASES = [pytest.param(op, actor, id=f"{op.id}-{actor.name}") for op in OPS for actor in ACTORS]


def _describe(resp) -> str:
    req = resp.request
    body = resp.text
    return f"{req.method} {req.url} → {resp.status_code}: {body[:400]!r}"


def _expectation(ctx, op, actor):
    """(outcome, status, known bug id or None) for this case on this target."""
    entry = ctx.expected["operations"].get(op.id)
    assert entry is not None, f"{op.id} is missing from the expected file of policy {ctx.target.policy}"
    cell = entry["roles"].get(actor.name)
    assert cell is not None, f"{op.id}: no expectation for actor {actor.name}"
    bug_id = None
    if isinstance(cell, dict):
        outcome, bug_id = cell["expect"], cell.get("known_bug")
    else:
        outcome = cell
    status = entry["status"]
    mode = entry.get("single_store")
    if mode and not ctx.multi_store and (mode == "before-policy" or outcome == "allow"):
        outcome, status = "no-multi-store", 404
    return entry, outcome, status, bug_id


@pytest.mark.integration
@pytest.mark.parametrize("op,actor", CASES)
def test_rbac(rbac_ctx, op, actor, request):
    """The operation, performed as the actor, is allowed or denied as the expected file of
    the target's policy mode says (see conformance/rbac/README.md)."""
    ctx = rbac_ctx
    entry, outcome, status, bug_id = _expectation(ctx, op, actor)

    allure.dynamic.epic("Barbican RBAC")
    allure.dynamic.feature(op.feature)
    allure.dynamic.story(op.story)
    allure.dynamic.severity(SEVERITY[op.severity])
    allure.dynamic.tag(ctx.target.policy)
    allure.dynamic.title(f"{op.id} as {actor.name}: {outcome} ({ctx.target.policy})")
    allure.dynamic.parameter("actor", actor.name)
    allure.dynamic.parameter("policy", ctx.target.policy)
    allure.dynamic.description(
        f"{op.method} {op.path} as **{actor.name}** ({actor.doc}; token roles {', '.join(actor.roles)}).\n\n"
        f"Policy rule `{op.rule}`, effective check string in {ctx.target.policy} mode:\n\n"
        f"    {entry.get('check_str', '?')}\n\n"
        f"Expected: **{outcome}** (HTTP {403 if outcome == 'deny' else status})."
        + (f"\n\nNote: {entry['note']}" if entry.get("note") else "")
        + (f"\n\nKnown deviation: {known_bug(bug_id).kwargs['reason']}" if bug_id else ""))

    if bug_id:
        request.node.add_marker(known_bug(bug_id))
    missing = sorted(r for r in {actor.role, ctx.owner, *(ctx.setup[k] for k in op.needs)} if not ctx.has_role(r))
    if missing:
        pytest.skip(f"the target has no credentials for {missing}")

    result = op.run(ctx, actor)
    resp = result.resp
    where = f"[{op.id} as {actor.name}, {ctx.target.policy}] "

    if outcome == "allow":
        assert resp.status_code == status, where + f"expected {status} (allowed); " + _describe(resp)
        if result.check_allowed:
            result.check_allowed(resp)
    elif outcome == "deny":
        assert resp.status_code == 403, where + "expected 403 (denied by policy); " + _describe(resp)
        body = resp.json()
        assert DENIED_TEXT in body.get("description", ""), where + "not the policy's 403; " + _describe(resp)
    elif outcome == "not-found":
        assert resp.status_code == 404, where + "expected 404 (hidden from other projects); " + _describe(resp)
    elif outcome == "no-multi-store":
        assert resp.status_code == 404, where + "expected 404 (one secret store); " + _describe(resp)
        assert NO_MULTI_STORE_TEXT in resp.text, where + _describe(resp)
    else:
        raise AssertionError(f"unknown outcome {outcome!r} in the expected file")

    if result.after:
        result.after(outcome == "allow")
