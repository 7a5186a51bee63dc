"""CVE-2022-3100 (story 2010258): query-string parameters must not reach the policy target.

Before the fix, GET /v1/secrets/{id}/payload?target.secret.read=read let a caller without rights
inject ACL data into the policy check. Every injection below must still be refused with 403."""

from __future__ import annotations

import pytest

from conformance.api import BLOCKER, labels
from conformance.conftest import ref_path

FEATURE = "Security regressions"


def _injections(http, caller: str) -> dict:
    return {
        "read-acl": {"target.secret.read": "read"},
        "project-access": {"target.secret.read_project_access": "True"},
        "project-id": {"target.secret.project_id": http.project_id(caller)},
        "creator-id": {"target.secret.creator_id": http.user_id(caller)},
    }


INJECTIONS = ["read-acl", "project-access", "project-id", "creator-id"]
# callers with no right to the secret: another project's member and writer, a same-project
# reader (no decrypt under either policy), the service user without an ACL entry
CALLERS = ["other-member", "other_writer", "reader", "service"]


@pytest.mark.parametrize("endpoint", ["payload", "metadata"])
@pytest.mark.parametrize("injection", INJECTIONS)
@pytest.mark.parametrize("caller", CALLERS)
@labels(FEATURE, "CVE-2022-3100 policy injection via query string", BLOCKER)
def test_query_string_cannot_grant_secret_access(http, res, caller, injection, endpoint):
    """GET of a secret's payload or metadata with ?target.secret.<field>=<value> (ACL read,
    project-access, project_id, creator_id) is 403 for a caller without rights, exactly as without
    the query string; the owner still reads it."""
    role = http.role(caller) if caller == "other_writer" else caller
    ref = ref_path(res.secret(payload="cve-2022-3100", payload_content_type="text/plain"))
    params = _injections(http, role)[injection]
    if endpoint == "payload":
        http.payload(ref, accept="text/plain", role=role).denied("Secret payload retrieval")
        http.payload(ref, accept="text/plain", role=role, params=params).denied("Secret payload retrieval")
        http.payload(ref, accept="text/plain", params=params).payload_is(b"cve-2022-3100")
    else:
        http.get(ref, role=role).denied("Secret retrieval")
        http.get(ref, role=role, params=params).denied("Secret retrieval")


@pytest.mark.parametrize("injection", ["read-acl", "project-id"])
@labels(FEATURE, "CVE-2022-3100 policy injection via query string", BLOCKER)
def test_query_string_cannot_grant_container_access(http, res, injection):
    """The same holds for containers: ?target.container.read=read or a forged project_id does
    not let another project's member read a container (403)."""
    cref = ref_path(res.container(secret_refs={"a": res.secret()}))
    params = {"read-acl": {"target.container.read": "read"},
              "project-id": {"target.container.project_id": http.project_id("other-member")}}[injection]
    http.get(cref, role="other-member", params=params).denied("Container retrieval")
