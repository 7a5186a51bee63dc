"""Topology files: what an environment is made of, validated before anything starts.

A topology is provider-neutral: the same file runs as local processes or as Docker
containers. Every validation error names the file, the field path and what is allowed.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.errors import TopologyError
from harness.providers import DEFAULT_PROVIDER, PROVIDERS

Backend = Literal["simple_crypto", "pkcs11", "kmip", "vault"]
# Built from the one registry of providers, so the error lists exactly those.
ProviderName = Literal[tuple(PROVIDERS)]  # type: ignore[valid-type]


class _Strict(BaseModel):
    # A misspelt field must be an error, never silently ignored.
    model_config = ConfigDict(extra="forbid")


class StoreSpec(_Strict):
    """One Barbican secret store (a [secretstore:NAME] section when several are enabled)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    backend: Backend
    global_default: bool = False


class HsmSpec(_Strict):
    """The PKCS#11 module behind pkcs11 stores. By default (`module: softhsm`, no `pin_env`) a
    fresh SoftHSM token per environment. With `pin_env`, an existing token instead: `module` is
    "softhsm" or the absolute path of any PKCS#11 library, the token is found by `token_label`,
    and its user PIN is read from the environment variable `pin_env` at `up` (then kept only in
    the run's 0600 secrets file). Nothing is initialised on that token; `mkek_label` and
    `hmac_label` must not exist on it yet (barbican-manage hsm gen_mkek/gen_hmac refuse them)."""

    module: str = "softhsm"
    token_label: str = "barbican"
    # Name of the environment variable holding an existing token's user PIN.
    pin_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # SOFTHSM2_CONF of an existing SoftHSM token (with pin_env; default: the caller's SOFTHSM2_CONF).
    softhsm_conf: str | None = None
    mkek_label: str = "barbican_mkek"
    hmac_label: str = "barbican_hmac"
    pkek_cache_ttl: int = Field(900, ge=0)
    # Load the module through the PKCS#11 fault shim (pass-through until a fault is set).
    shim: bool = True
    # Extra [p11_crypto_plugin] options; they override the SoftHSM-safe defaults.
    p11_options: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _existing_token(self) -> "HsmSpec":
        if self.module != "softhsm":
            if not Path(self.module).is_absolute():
                raise ValueError("hsm.module: 'softhsm' or the absolute path of a PKCS#11 library")
            if self.pin_env is None:
                raise ValueError("hsm.module: a library path needs hsm.pin_env (an existing token's PIN); "
                                 "environments make fresh tokens only with module: softhsm")
        if self.softhsm_conf is not None and self.pin_env is None:
            raise ValueError("hsm.softhsm_conf: only with hsm.pin_env (an existing SoftHSM token)")
        return self


class VaultSpec(_Strict):
    """The OpenBao server behind vault stores, one per environment (harness/services/vault.py):
    a KV mount, a policy for Barbican alone and an AppRole Barbican logs in with."""

    mount: str = Field("barbican", pattern=r"^[a-z][a-z0-9_-]*$")
    kv_version: Literal[1, 2] = 2
    # Lifetime of the token Barbican gets at login. castellan logs in again only when it
    # has passed, whatever Vault answers in between (a revoked token keeps failing).
    token_ttl: int = Field(3600, ge=60)


class BarbicanSpec(_Strict):
    nodes: int = Field(2, ge=1, le=8)
    processes: int = Field(1, ge=1, le=8)
    threads: int = Field(4, ge=1, le=32)
    # keystonemiddleware's token_cache_time: how long a node trusts a token it validated,
    # Keystone down or not. None: its default (300 s). Short, an outage outlasts it.
    token_cache_s: int | None = Field(None, ge=1, le=86_400)
    # The Barbican build to run (harness.builds.sources): pypi:VERSION, wheel:PATH, sdist:PATH or
    # git:PATH[@REF], paths relative to the topology file; default: the harness's own release.
    source: str | None = None

    @field_validator("source")
    @classmethod
    def _source_kind(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^((pypi|wheel|sdist|git):.+|\d+(\.\d+)*)$", value):
            raise ValueError(f"'{value}': use pypi:VERSION, wheel:PATH, sdist:PATH or git:PATH[@REF]")
        return value


class Topology(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str = ""
    provider: ProviderName = DEFAULT_PROVIDER
    policy: Literal["legacy", "secure-rbac"] = "legacy"
    database: Literal["mariadb", "sqlite"] = "mariadb"
    barbican: BarbicanSpec = Field(default_factory=BarbicanSpec)
    stores: list[StoreSpec] = Field(min_length=1)
    async_orders: bool = False
    hsm: HsmSpec | None = None
    vault: VaultSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "Topology":
        names = [s.name for s in self.stores]
        if len(set(names)) != len(names):
            raise ValueError(f"stores: names must be unique, got {names}")
        backends = [s.backend for s in self.stores]
        if len(set(backends)) != len(backends):
            raise ValueError(f"stores: one store per backend, got {backends}")
        if len(self.stores) > 1 and sum(s.global_default for s in self.stores) != 1:
            raise ValueError("stores: with several stores exactly one needs global_default: true")
        if "pkcs11" in backends and self.hsm is None:
            self.hsm = HsmSpec()
        if "vault" in backends and self.vault is None:
            self.vault = VaultSpec()
        if self.vault is not None and "vault" not in backends:
            raise ValueError("vault: only with a store of backend vault")
        if self.database == "sqlite" and (
            self.barbican.nodes > 1 or self.barbican.threads > 1 or self.barbican.processes > 1
        ):
            # Measured: sqlite fails ~45% of concurrent store+get pairs with "database is locked".
            raise ValueError(
                "database: sqlite only serves one node with one process and one thread "
                "(barbican.nodes/processes/threads = 1); use database: mariadb"
            )
        return self

    @property
    def backends(self) -> list[str]:
        return [s.backend for s in self.stores]

    @property
    def multiple_stores(self) -> bool:
        return len(self.stores) > 1


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """Allowed field names at a location, for the 'did you mean' part of an error."""
    current: Any = model
    key_next = False  # after a dict[str, Model] field comes a key, then the model's fields
    for part in loc[:-1]:
        if isinstance(part, int) or key_next:
            key_next = False
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ()) or (ann,)
        maps = [a for a in (ann, *args) if typing.get_origin(a) is dict]
        if maps:
            args, key_next = typing.get_args(maps[0])[1:], True
        current = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if current is None:
            return []
    return sorted(getattr(current, "model_fields", {}))


def describe_validation_error(path: Path, exc: ValidationError, model: type[BaseModel]) -> str:
    """One line for one bad field ("FILE: field 'x': what is allowed"); several bad fields:
    a header, then one line each."""
    lines = validation_lines(exc, model)
    if len(lines) == 1:
        return f"{path}: {lines[0]}"
    return "\n".join([f"{path}: invalid {model.__name__.lower()}", *(f"  {line}" for line in lines)])


def validation_lines(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    """Each error of a pydantic validation as "field 'a.b': what is wrong / allowed"."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _field_names(model, loc)
            guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"; did you mean '{guess[0]}'?" if guess else ""
            lines.append(f"field '{where}': unknown field{hint} allowed: {', '.join(allowed)}")
        else:
            lines.append(f"field '{where}': {err['msg'].replace('Value error, ', '')}")
    return lines


def load_yaml_model(path: str | Path, model: type[BaseModel]) -> Any:
    path = Path(path)
    if not path.is_file():
        raise TopologyError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise TopologyError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise TopologyError(f"{path}: expected a mapping at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise TopologyError(describe_validation_error(path, exc, model)) from None


def load_topology(path: str | Path) -> Topology:
    return load_yaml_model(path, Topology)
