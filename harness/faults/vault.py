"""Vault / OpenBao incidents of the vault secret store (Barbican's vault_plugin).

The faults act as Vault's operator would, through the environment's Capability.VAULT facet
(OpenBao's HTTP API with the root token harness/services/vault.py keeps 0600), or on the
fault proxy's `vault` link between Barbican and OpenBao. Undo data never holds a secret:
the facet re-reads the secret_id Barbican needs from its credentials file at heal.

What Barbican 23.0.0 (castellan 5.8.0) shows under each, measured:

| fault | a request for a vault secret | log line (barbican.plugin.castellan_secret_store) |
|---|---|---|
| vault_sealed | 500 "... failure seen" | KeyManagerError: Service Unavailable |
| vault_token_revoked | 500 | Forbidden: You are not authorized to complete this action. |
| vault_secret_id_expired | 500 | KeyManagerError: invalid role or secret ID, then (lockout) Forbidden |
| vault_policy_revoked | 500 | Forbidden: You are not authorized ... |
| vault_mount_disabled | GET 500; a POST 201 that stores nothing | ManagedObjectNotFoundError: Key not found, uuid: ... |
| vault_outage | 500 | KeyManagerError: HTTPConnectionPool(...) ... |
| vault_latency | slower, nothing fails below castellan's 60 s timeout | |
"""

from __future__ import annotations

import secrets as _rand
from pathlib import Path
from typing import Any

from harness.faults.base import Fault, FaultError, Params, node_name
from harness.faults.network import _LinkDown, _LinkLatency
from harness.target import Capability

VAULT = Capability.VAULT
NODES = Capability.NODE_CONTROL


class _VaultFault(Fault):
    backend = "vault"
    capabilities = frozenset({Capability.API, VAULT})


def _restart_barbican(env) -> None:
    """A fresh castellan in every API node and worker: it logs in at its next Vault request."""
    nodes = env.facet(NODES)
    for node in env.nodes:
        nodes.restart(node.name)
    for worker in nodes.workers():
        nodes.restart_worker(worker)


class VaultSealed(_VaultFault):
    """Vault sealed (a restart without auto-unseal, an operator's `bao operator seal`):
    OpenBao answers every request 503 "Vault is sealed", so Barbican answers 500 for every
    secret of the vault store (KeyManagerError: Service Unavailable in its log). Nothing
    is lost: heal unseals with the environment's unseal keys, and Barbican's cached tokens
    and every secret work again at once."""

    name = "vault_sealed"

    def inject(self, env, undo: dict[str, Any]) -> None:
        env.facet(VAULT).seal()

    def heal(self, env, undo: dict[str, Any]) -> None:
        env.facet(VAULT).unseal()


class VaultTokenRevoked(_VaultFault):
    """Barbican's Vault tokens revoked (a leaked-token response, a lease purge): every
    token issued by the AppRole login is revoked and OpenBao answers Barbican 403; Barbican
    answers 500 (castellan Forbidden in its log).

    castellan does not log in again on a 403: it keeps the revoked token until the token's
    TTL (topology vault.token_ttl) has passed, so Barbican stays down although its AppRole
    credentials are valid (tests/test_vault.py pins this as a strict xfail). Heal does
    what an operator does: restart the API nodes (and workers), which log in afresh."""

    name = "vault_token_revoked"
    capabilities = frozenset({Capability.API, VAULT, NODES})

    def inject(self, env, undo: dict[str, Any]) -> None:
        env.facet(VAULT).revoke_logins()

    def heal(self, env, undo: dict[str, Any]) -> None:
        _restart_barbican(env)


class SecretIdParams(Params):
    # The node that restarts (must log in again) while the secret_id is invalid; the others
    # keep their cached token and keep working. Default: every node and worker.
    node: str | None = None


class VaultSecretIdExpired(_VaultFault):
    """Barbican's AppRole secret_id expired (secret_id_ttl passed, or it was destroyed), then
    API nodes restarted, as happens when their token's TTL ends: their login answers 400
    "invalid role or secret ID" (OpenBao says the same for an expired and a destroyed
    secret_id), so they answer 500 for every vault secret, while a node that did not
    restart still works on its cached token.

    castellan logs in again at every request, without backoff: after 5 failures OpenBao's
    user lockout locks Barbican's role_id for 15 minutes, and logins get 403 "permission
    denied" (castellan Forbidden) even once the secret_id is valid again. Heal does what an
    operator must: re-issue the same secret_id (what Barbican's config holds, with AppRole's
    custom-secret-id) and unlock the role (`sys/locked-users/.../unlock`); the nodes log in
    at their next request, without a restart."""

    name = "vault_secret_id_expired"
    Params = SecretIdParams
    capabilities = frozenset({Capability.API, VAULT, NODES})

    def prepare(self, env) -> dict[str, Any]:
        return {"node": node_name(env, self.params.node) if self.params.node else None}

    def inject(self, env, undo: dict[str, Any]) -> None:
        env.facet(VAULT).destroy_secret_id()
        if undo["node"]:
            env.facet(NODES).restart(undo["node"])
        else:
            _restart_barbican(env)

    def heal(self, env, undo: dict[str, Any]) -> None:
        vault = env.facet(VAULT)
        vault.reissue_secret_id()
        vault.unlock_logins()


class VaultPolicyRevoked(_VaultFault):
    """Barbican's Vault policy deleted (a policy clean-up, a botched policy deploy): its
    tokens still exist but grant nothing, so OpenBao answers 403 and Barbican 500 (castellan
    Forbidden in its log). Heal writes the policy back; tokens look their policies up at
    each request, so Barbican works again at once."""

    name = "vault_policy_revoked"

    def prepare(self, env) -> dict[str, Any]:
        # The policy text names paths and capabilities only: no secret.
        return {"policy": env.facet(VAULT).policy()}

    def inject(self, env, undo: dict[str, Any]) -> None:
        env.facet(VAULT).delete_policy()

    def heal(self, env, undo: dict[str, Any]) -> None:
        env.facet(VAULT).write_policy(undo["policy"])


class MountParams(Params):
    # Enable an empty mount at the same path afterwards (a `secrets disable` + `enable`
    # by mistake): new secrets work again, old ones stay lost.
    reenable: bool = False


class VaultMountDisabled(_VaultFault):
    """Barbican's KV mount disabled (`bao secrets disable`): OpenBao deletes every secret
    in it. Reading any existing vault secret answers 500 (ManagedObjectNotFoundError "Key
    not found" in Barbican's log): data loss. Worse, a store answers 201 while nothing
    reached Vault: castellan takes the 404 of the write for success (tests/test_vault.py
    pins this as a strict xfail); such secrets stay lost after heal.

    Re-enabling the mount brings nothing back. What does is the operator's backup: prepare
    takes a Raft snapshot (0600 file under the run's vault directory, barrier-encrypted)
    and heal restores it, which rolls back everything stored after it. Tokens issued
    during the fault are rolled back too, so heal restarts the API nodes when a login
    happened in between."""

    name = "vault_mount_disabled"
    Params = MountParams
    capabilities = frozenset({Capability.API, VAULT, NODES})

    def prepare(self, env) -> dict[str, Any]:
        path = env.run_dir / "vault" / "snapshots" / f"before-mount-disabled-{_rand.token_hex(4)}.snap"
        env.facet(VAULT).snapshot(path)
        return {"snapshot": str(path)}

    def inject(self, env, undo: dict[str, Any]) -> None:
        vault = env.facet(VAULT)
        vault.disable_mount()
        if self.params.reenable:
            vault.enable_mount()

    def heal(self, env, undo: dict[str, Any]) -> None:
        vault = env.facet(VAULT)
        snapshot = Path(undo["snapshot"])
        if not snapshot.is_file():
            if vault.mount in vault.mounts():
                return  # restored by an earlier heal, which removed the snapshot
            raise FaultError(f"vault_mount_disabled: snapshot {snapshot} is gone; the mount's data cannot "
                             "be restored")
        before = vault.token_accessors()
        vault.restore(snapshot)
        lost_logins = before - vault.token_accessors()
        snapshot.unlink()
        if lost_logins:
            _restart_barbican(env)


class VaultOutage(_LinkDown):
    """Vault unreachable from Barbican (network, load balancer, OpenBao down): castellan's
    connection fails at once (KeyManagerError: HTTPConnectionPool ... in the log) and
    Barbican answers 500 for every vault secret; nothing is lost."""

    name = "vault_outage"
    link = "vault"
    backend = "vault"


class VaultLatency(_LinkLatency):
    """Slow Vault: every answer OpenBao sends Barbican waits `ms` longer. castellan's own
    timeout (60 s, not settable through Barbican's [vault_plugin]) is far away, so requests
    slow down and nothing fails."""

    name = "vault_latency"
    link = "vault"
    backend = "vault"
