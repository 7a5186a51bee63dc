"""Derive the expected RBAC matrices from Barbican's own policy code.

    .venv/bin/python conformance/rbac/derive_expected.py          # (re)write both files
    .venv/bin/python conformance/rbac/derive_expected.py --check  # exit 1 if a file differs

For every operation and actor of `rbac_operations.py` this evaluates the policy rule the
Barbican controller enforces with oslo.policy, the way Barbican does
(`barbican.api.controllers._do_enforce_rbac`):

- legacy      = enforce_new_defaults False, enforce_scope False (Barbican's effective
                default). Every new rule starts with `True:%(enforce_new_defaults)s and`, so
                only the deprecated (legacy) check string can pass.
- secure-rbac = enforce_new_defaults True, enforce_scope True: the new defaults only.

The credentials are those of the seeded users (roles as Keystone puts them in the token:
admin implies member implies reader); the target is what the controller builds: the
resource's project and creator, `read_project_access` (True unless the resource is
private) and `read` when the caller is listed in the resource's read ACL.

Outcomes that do not come from the policy are added here, each for a stated reason
(NON_POLICY below), and confirmed bugs are recorded in KNOWN_BUGS (strict xfail; the bug itself is
an entry of harness/known_bugs/catalogue.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from rbac_operations import ACTORS, EXPECTED_FILES, OPS

OWNER = {"legacy": "creator", "secure-rbac": "member"}
SETUP = {
    "legacy": {"project_admin": "admin", "quota_admin": "service-admin", "transport_key_admin": "service-admin"},
    "secure-rbac": {"project_admin": "admin", "quota_admin": "admin", "transport_key_admin": "admin"},
}
PROJECT_IDS = {"a": "project-a-id", "b": "project-b-id", "service": "service-id", "admin": "admin-id"}

# Real Barbican behaviour that contradicts the documented policy, observed on the service:
# (policy, op, actor) → (documented outcome, id of the bug in harness/known_bugs/catalogue.py,
# which says what the service does). Kept as strict xfails.
KNOWN_BUGS: dict[tuple[str, str, str], tuple[str, str]] = {}


def _enforcer(policy: str):
    from barbican.common import policies
    from oslo_config import cfg
    from oslo_policy import policy as oslo_policy

    conf = cfg.ConfigOpts()
    conf([], project="barbican-rbac-derive")
    oslo_policy.Enforcer(conf)  # registers the [oslo_policy] options
    secure = policy == "secure-rbac"
    conf.set_override("enforce_new_defaults", secure, "oslo_policy")
    # oslo.policy 6 has no enforce_scope option any more: scope types are always checked
    # (a project-scoped token passes every Barbican rule, all are scope_types=['project']).
    # No operator policy file: the defaults registered by Barbican's code, nothing else.
    conf.set_override("policy_file", "/nonexistent/rbac-derive-policy.yaml", "oslo_policy")
    conf.set_override("policy_dirs", [], "oslo_policy")
    enforcer = oslo_policy.Enforcer(conf)
    enforcer.suppress_default_change_warnings = True
    enforcer.suppress_deprecation_warnings = True
    enforcer.register_defaults(policies.list_rules())
    enforcer.load_rules()
    return enforcer


def _check_str(enforcer, rule: str) -> str:
    enforcer.load_rules()
    return str(enforcer.rules[rule])


def _target(policy: str, op, actor) -> dict:
    target = {"enforce_new_defaults": policy == "secure-rbac"}
    if op.entity in ("secret", "container"):
        e = f"target.{op.entity}."
        target[e + "project_id"] = PROJECT_IDS["a"]
        target[e + "creator_id"] = OWNER[policy]
        target[e + "read_project_access"] = not op.private
        if actor.in_acl:
            target[e + "read"] = "read"
    elif op.entity == "order":
        target["target.order.project_id"] = PROJECT_IDS["a"]
        target["target.order.creator_id"] = OWNER[policy]
    return target


def _allowed(enforcer, op, actor, policy: str) -> bool:
    from oslo_context import context

    ctx = context.RequestContext(user_id=actor.role, project_id=PROJECT_IDS[actor.project],
                                 roles=list(actor.roles))
    return bool(enforcer.authorize(op.rule, _target(policy, op, actor), ctx, do_raise=False))


def non_policy(op, actor) -> tuple[str, str] | None:
    """Outcomes decided by Barbican outside the policy check: (outcome, reason)."""
    if op.entity == "order" and actor.project != "a":
        return ("not-found", "orders are looked up within the caller's project before the policy check")
    return None


def derive(policy: str) -> dict:
    import barbican.version

    enforcer = _enforcer(policy)
    ops = {}
    for op in OPS:
        roles = {}
        for actor in ACTORS:
            special = non_policy(op, actor)
            outcome = special[0] if special else ("allow" if _allowed(enforcer, op, actor, policy) else "deny")
            bug = KNOWN_BUGS.get((policy, op.id, actor.name))
            if bug:
                from harness.known_bugs.catalogue import get

                roles[actor.name] = {"expect": outcome, "known_bug": get(bug[1]).id}
                assert bug[0] == outcome, (policy, op.id, actor.name, bug, outcome)
            else:
                roles[actor.name] = outcome
        entry = {"rule": op.rule, "check_str": _check_str(enforcer, op.rule), "status": op.status}
        if op.single_store:
            entry["single_store"] = op.single_store
        if op.doc:
            entry["note"] = op.doc
        entry["roles"] = roles
        ops[op.id] = entry
    return {"policy": policy, "barbican": barbican.version.version_info.version_string(),
            "owner": OWNER[policy], "setup": SETUP[policy], "operations": ops}


HEADER = """\
# Expected RBAC outcomes, policy mode: {policy}
# GENERATED by derive_expected.py from Barbican {barbican}'s policy code
# (barbican/common/policies/*.py); {how}.
# Do not edit by hand: change the generator (NON_POLICY / KNOWN_BUGS) and re-run it.
#
# operations.<op>.roles.<actor>:
#   allow      → the operation succeeds with `status`
#   deny       → 403, body description "... attempt not allowed - please review your
#                user/project privileges"
#   not-found  → 404 whatever the policy says (Barbican hides the resource from callers of
#                other projects before it checks the policy)
#   {{expect: ..., known_bug: ID}} → the documented outcome; the service is known to differ
#                (strict xfail; harness/known_bugs/catalogue.py entry ID says how)
# single_store: with one secret store (target.backends has one entry) the route answers
#   404 "Multiple backends support is not enabled": "after-policy" → allowed callers get
#   404, denied ones 403; "before-policy" → 404 for every caller.
# owner: the role that creates the resources (the writer role of project-a).
# setup: roles the suite uses to prepare and remove what the operations need.
"""
HOW = {"legacy": "legacy = the deprecated check strings (enforce_new_defaults False, "
                 "Barbican's effective default)",
       "secure-rbac": "secure RBAC = the new defaults (enforce_new_defaults True, enforce_scope True)"}


def render(doc: dict) -> str:
    import yaml

    body = yaml.safe_dump(doc, sort_keys=False, width=120, default_flow_style=False)
    return HEADER.format(policy=doc["policy"], barbican=doc["barbican"], how=HOW[doc["policy"]]) + body


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    status = 0
    for policy, path in EXPECTED_FILES.items():
        text = render(derive(policy))
        if args.check:
            if not path.exists() or path.read_text() != text:
                print(f"{path.name}: differs from the policy code; re-run {Path(__file__).name}")
                status = 1
            else:
                print(f"{path.name}: up to date")
        else:
            path.write_text(text)
            print(f"wrote {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
