"""Who exists in an environment's Keystone, and how to get a session as each of them.

Seeded through keystoneclient in one process (each `openstack` CLI call costs ~2 s):
two projects with one user per role (new roles admin/member/reader and Barbican's legacy
creator/observer/audit), an Octavia-like service user, a key-manager:service-admin, and
the key-manager service with one endpoint per Barbican node (one region per node).
"""

from __future__ import annotations

from dataclasses import dataclass

from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

PROJECTS = ("project-a", "project-b")
PROJECT_ROLES = ("admin", "member", "reader", "creator", "observer", "audit")
LEGACY_ROLES = ("creator", "observer", "audit", "key-manager:service-admin")
SERVICE_PROJECT = "service"
HTTP_TIMEOUT = 15  # seconds; every call the harness makes has one

# Which role does what, per policy mode (Barbican's legacy defaults vs secure RBAC): the seeded
# users' role names, which a targets file (harness.targets) uses for an existing cloud too.
POLICY_ROLES = {
    "legacy": {
        "writer": "creator",           # secrets:post / containers:post / orders:post
        "project_admin": "admin",      # the only one allowed to delete orders
        "quota_admin": "service-admin",  # project_quotas:* = key-manager:service-admin
        "transport_key_admin": "service-admin",  # transport_keys:post/delete
        "store_admin": "admin",        # secretstore_preferred:post/delete
        "other_writer": "other-creator",
        "other_admin": "other-admin",
    },
    "secure-rbac": {
        "writer": "member",
        "project_admin": "admin",
        "quota_admin": "admin",        # project_quotas:* = role:admin
        "transport_key_admin": "admin",
        "store_admin": "admin",
        "other_writer": "other-member",
        "other_admin": "other-admin",
    },
}


@dataclass(frozen=True)
class Credential:
    """A user the harness can act as. `role` is the harness's name for it."""

    role: str
    username: str
    project: str
    password: str
    domain: str = "Default"


def seeded_credentials(password: str, admin_password: str, service_password: str) -> dict[str, Credential]:
    creds: dict[str, Credential] = {
        "cloud-admin": Credential("cloud-admin", "admin", "admin", admin_password),
        "barbican-service": Credential("barbican-service", "barbican", SERVICE_PROJECT, service_password),
        "service": Credential("service", "octavia", SERVICE_PROJECT, password),
        "service-admin": Credential("service-admin", "kms-service-admin", SERVICE_PROJECT, password),
    }
    for i, project in enumerate(PROJECTS):
        for role in PROJECT_ROLES:
            # project-a's users are the plain role names; project-b's are "other-<role>".
            name = role if i == 0 else f"other-{role}"
            creds[name] = Credential(name, f"{project}-{role}", project, password)
    return creds


def make_project_user(auth_url: str, admin: Credential, role: str, password: str, tag: str) -> Credential:
    """A fresh project with one user holding `role`: a project Barbican has never seen
    (no project KEK yet), for probes that must tell 'new operations' from 'existing data'."""
    from keystoneclient.v3 import client as ks_client

    ks = ks_client.Client(session=session_for(auth_url, admin))
    domain = ks.domains.find(name="Default")
    project = ks.projects.create(name=f"fresh-{tag}", domain=domain)
    user = ks.users.create(name=f"fresh-{tag}-{role}", domain=domain, password=password, default_project=project)
    ks.roles.grant(ks.roles.find(name=role), user=user, project=project)
    return Credential(f"fresh-{tag}", user.name, project.name, password)


def session_for(auth_url: str, cred: Credential, timeout: float = HTTP_TIMEOUT) -> ks_session.Session:
    auth = v3.Password(auth_url=auth_url, username=cred.username, password=cred.password,
                       project_name=cred.project, user_domain_name=cred.domain,
                       project_domain_name=cred.domain)
    return ks_session.Session(auth=auth, timeout=timeout)


def seed(auth_url: str, creds: dict[str, Credential], nodes: dict[str, str]) -> dict[str, str]:
    """Create projects, roles, users, assignments and the key-manager catalog.
    `nodes` maps node name → Barbican URL. Returns project name → project id."""
    from keystoneclient.v3 import client as ks_client

    ks = ks_client.Client(session=session_for(auth_url, creds["cloud-admin"]))
    domain = ks.domains.find(name="Default")
    roles = {r.name: r for r in ks.roles.list()}
    for name in LEGACY_ROLES + ("service", "member", "reader"):
        if name not in roles:
            roles[name] = ks.roles.create(name=name)
    projects = {p.name: p for p in ks.projects.list()}
    for name in PROJECTS + (SERVICE_PROJECT,):
        if name not in projects:
            projects[name] = ks.projects.create(name=name, domain=domain)

    assignments = {
        "barbican-service": ("admin", "service"),
        "service": ("service",),
        "service-admin": ("key-manager:service-admin",),
    }
    for cred in creds.values():
        if cred.role == "cloud-admin":
            continue
        user = ks.users.create(name=cred.username, domain=domain, password=cred.password,
                               default_project=projects[cred.project])
        for role in assignments.get(cred.role, (cred.role.removeprefix("other-"),)):
            ks.roles.grant(roles[role], user=user, project=projects[cred.project])

    service = ks.services.create(name="barbican", type="key-manager", description="Key Manager")
    first = True
    for node, url in nodes.items():
        regions = [node] + (["RegionOne"] if first else [])
        first = False
        for region in regions:
            if region != "RegionOne":
                try:
                    ks.regions.create(id=region)
                except Exception:  # noqa: BLE001 - already exists on a re-seed
                    pass
            for interface in ("public", "internal", "admin"):
                ks.endpoints.create(service=service, url=url, interface=interface, region=region)
    return {name: p.id for name, p in projects.items()}
