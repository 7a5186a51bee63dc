"""Scenario files: an incident as data (scenarios/*.yaml), validated before anything starts.

    name: kek-mismatch-one-node
    environment: ../environments/simple-crypto.yaml   # relative to this file
    seed: {secrets: 6, tls_containers: 1, luks_keys: 1}
    timeline:
      - at: 2
        fault: kek_mismatch
        params: {node: "2"}
        heal_at: 12
    expect:
      verdict: {category: kek_mismatch_or_key_loss, blast_radius: existing_secrets_at_risk,
                affected_nodes: [barbican-2]}
      integrity: {lost: []}

Fault parameters may name seeded resources: "@tls_container[0]", "@tls_key[0]" (the
container's private key), "@luks_key[0]", "@secret[3]" are replaced by their hrefs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.errors import HarnessError, TopologyError
from harness.providers import PROVIDERS
from harness.timeline import MAX_TIMELINE_S, Event, end_of
from harness.topology import ProviderName, load_topology, load_yaml_model

REF = re.compile(r"^@(secret|tls_container|tls_key|luks_key)\[(\d+)\]$")
CATEGORIES = ("healthy", "kek_mismatch_or_key_loss", "hsm_unreachable", "hsm_degraded", "backend_degraded",
              "acl_permission", "expiration", "auth_outage", "backend_outage", "orders_stalled",
              "node_down", "consumed_secret_missing", "backend_data_lost", "backend_access_denied")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SeedSpec(_Strict):
    secrets: int = Field(6, ge=0, le=200)  # mixed types, across projects and nodes
    tls_containers: int = Field(1, ge=0, le=20)  # read by the service user through an ACL
    luks_keys: int = Field(1, ge=0, le=50)  # symmetric keys with a consumer


class VerdictExpect(_Strict):
    category: Literal[CATEGORIES]  # type: ignore[valid-type]
    blast_radius: Literal["existing_secrets_at_risk", "new_operations_only", "none"] | None = None
    incident: Literal["outage", "data_loss", "none"] | None = None
    affected_nodes: list[str] | None = None


class IntegrityExpect(_Strict):
    lost: list[str] = Field(default_factory=list)  # seed names ("secret[0]") expected unreadable after heal


class OperationExpect(_Strict):
    rewrap_reported_success: bool | None = None
    errors_in_output: bool | None = None
    pkeks_rewrapped: bool | None = None


class Expect(_Strict):
    verdict: VerdictExpect | None = None
    within_s: float = Field(5.0, gt=0)  # target for injection → correct verdict (recorded)
    integrity: IntegrityExpect = Field(default_factory=IntegrityExpect)
    healthy_after_heal: bool = True
    operation: OperationExpect | None = None


class LoadSpec(_Strict):
    writers: int = Field(0, ge=0, le=8)  # background writer threads through the ledger
    interval: float = Field(0.2, gt=0)


class Scenario(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str = ""
    environment: str
    rng_seed: int = 1  # seeds the random draws of faults that have them (event i gets rng_seed + i)
    seed: SeedSpec = Field(default_factory=SeedSpec)
    load: LoadSpec = Field(default_factory=LoadSpec)
    timeline: list[Event] = Field(min_length=1)
    duration: float | None = Field(None, gt=0, le=MAX_TIMELINE_S)  # default: last event + 10 s
    probe_interval: float = Field(0.5, gt=0)
    # Probe rounds this long after a fault took effect are its delayed phase (a cache
    # expired, retries ran out): the behaviour signature compares them on their own.
    delayed_phase_s: float | None = Field(None, gt=0)
    # The seconds before delayed_phase_s in which the delayed phase may begin (per-process
    # caches expire at different times): their rounds are "transition", recorded, not compared.
    transition_s: float = Field(0, ge=0)
    expect: Expect = Field(default_factory=Expect)
    # Where the scenario can run: a network partition needs containers to cut off.
    providers: list[ProviderName] = Field(default_factory=lambda: list(PROVIDERS), min_length=1)

    # Filled in by load_scenario: where the file and its environment are.
    path: Path | None = None

    def environment_path(self) -> Path:
        base = self.path.parent if self.path else Path.cwd()
        return (base / self.environment).resolve()

    @property
    def end(self) -> float:
        return self.duration or end_of(self.timeline) + 10


def load_scenario(path: str | Path) -> Scenario:
    """Parse and check everything that can be checked without starting a service."""
    from harness.faults.engine import make_fault
    from harness.providers.facets import environment_traits

    path = Path(path)
    scenario = load_yaml_model(path, Scenario)
    scenario.path = path.resolve()
    env_path = scenario.environment_path()
    try:
        topology = load_topology(env_path)
    except TopologyError as exc:
        raise TopologyError(f"{path}: field 'environment': {exc}") from None
    counts = {"secret": scenario.seed.secrets, "tls_container": scenario.seed.tls_containers,
              "tls_key": scenario.seed.tls_containers, "luks_key": scenario.seed.luks_keys}
    for i, event in enumerate(scenario.timeline):
        where = f"{path}: field 'timeline.{i}"
        if event.fault:
            params = {}
            for key, value in event.params.items():
                m = REF.match(value) if isinstance(value, str) else None
                if m and int(m.group(2)) >= counts[m.group(1)]:
                    raise TopologyError(f"{where}.params.{key}': {value} names seed item {m.group(2)} "
                                        f"but the scenario seeds {counts[m.group(1)]} {m.group(1)}(s)")
                params[key] = "https://placeholder/v1/secrets/x" if m else value
            try:
                fault = make_fault(event.fault, params)
            except Exception as exc:  # FaultError: names the allowed faults / parameters
                raise TopologyError(f"{where}.fault': {exc}") from None
            for provider in scenario.providers:
                try:
                    fault.check(environment_traits(topology, provider, name=f"{env_path.name} on {provider}"))
                except HarnessError as exc:
                    raise TopologyError(f"{where}.fault': {exc}") from None
    for name in scenario.expect.integrity.lost:
        m = REF.match("@" + name)
        if not m or int(m.group(2)) >= counts[m.group(1)]:
            raise TopologyError(f"{path}: field 'expect.integrity.lost': '{name}' is not a seeded item")
    if scenario.expect.verdict and scenario.expect.verdict.affected_nodes:
        names = {f"barbican-{i + 1}" for i in range(topology.barbican.nodes)}
        unknown = set(scenario.expect.verdict.affected_nodes) - names
        if unknown:
            raise TopologyError(f"{path}: field 'expect.verdict.affected_nodes': {sorted(unknown)} not in "
                                f"{sorted(names)}")
    return scenario
