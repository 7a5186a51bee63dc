"""`--dry-run`: what a command would do to a target, said before (instead of) doing it.

A plan names the projects the harness acts in, what it would write, the faults with
what each changes and how it is healed, and the clean-up. Building a plan reads the
target (a token, the catalog) and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.faults import fault_class
from harness.target import traits_of


@dataclass
class Plan:
    title: str
    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> "Plan":
        self.lines.append(line)
        return self

    def render(self) -> str:
        return "\n".join([f"{self.title} (dry run: nothing was changed)"] + [f"  - {ln}" for ln in self.lines])


def _who(target, roles: list[str]) -> str:
    present = [r for r in roles if r in target.roles]
    return ", ".join(present) or "-"


def _fault_lines(target, events) -> list[str]:
    traits = traits_of(target)
    out = []
    for e in events:
        if e.operation:
            out.append(f"at {e.at:g} s: operator procedure {e.operation}")
            continue
        cls = fault_class(e.fault)
        needs = ", ".join(cls.needs()) or "API calls only"
        heal = f"healed at {e.heal_at:g} s" if e.heal_at is not None else "healed when the run ends"
        try:
            touched = cls(cls.Params.model_validate({k: v for k, v in e.params.items()
                                                     if not str(v).startswith("@")})).scope(traits)
        except Exception:  # noqa: BLE001 - the plan shows what it can
            touched = []
        where = f" on {', '.join(touched)}" if touched else ""
        out.append(f"at {e.at:g} s: fault {e.fault} {e.params or ''}{where} ({needs}); {heal}; "
                   f"journaled first, healed by `heal` after a crash")
    return out


def scenario_plan(target, scenario) -> Plan:
    from harness.seeding import SEED_ROLES

    s = scenario.seed
    plan = Plan(f"scenario {scenario.name} on {target.name}")
    roles = [target.writer_role, *SEED_ROLES(target)]
    plan.add(f"acts as roles: {_who(target, roles)} (their projects)")
    plan.add(f"writes: {s.secrets} secrets of mixed types, {s.tls_containers} TLS container(s) (certificate, "
             f"private key, ACL for the service user, a consumer), {s.luks_keys} key(s) with a volume consumer; "
             f"background writers: {scenario.load.writers}; all named under one bh-<time>-<id> prefix")
    plan.add(f"probes: canary secrets (stored, read, deleted) on {len(target.nodes)} node(s) every "
             f"{scenario.probe_interval:g} s while a fault is in effect")
    plan.lines += _fault_lines(target, scenario.timeline)
    plan.add("clean-up: every secret and container under the prefix is deleted at the end "
             "(or by `barbican-harness heal` after a crash)")
    return plan


def load_plan(target, users: int, duration: float, weights: dict[str, int], events, thresholds) -> Plan:
    from harness.load_driver.driver import _roles, usable_weights

    weights, notes = usable_weights(target, weights)
    plan = Plan(f"load on {target.name}")
    plan.add(f"acts as roles: {_who(target, sorted(set(_roles(target).values())))}")
    plan.add(f"fixtures: {'4 TLS containers (3 secrets each, with ACLs), ' if weights.get('octavia') else ''}"
             "16 LUKS keys; named under one bh-<time>-<id> prefix")
    plan.add(f"traffic: {users} users for {duration:g} s, user classes {weights}" + (f" ({'; '.join(notes)})"
                                                                                    if notes else ""))
    plan.lines += _fault_lines(target, events)
    plan.add(f"thresholds: {', '.join(t.label for t in thresholds) or 'none'}")
    plan.add("clean-up: every secret and container under the prefix is deleted after the ledger check")
    return plan


def fault_plan(target, fault) -> Plan:
    traits = traits_of(target)
    touched = fault.scope(traits)
    plan = Plan(f"fault {fault.name} on {target.name}")
    plan.add(f"what it models: {fault.incident()}")
    plan.add(f"parameters: {fault.params.model_dump()}")
    plan.add(f"needs: {', '.join(fault.needs()) or 'API calls only'}; touches "
             f"{', '.join(touched) if touched else 'no node (API data only)'}")
    plan.add("journaled before it changes anything; `barbican-harness fault heal` (or `heal`) undoes it")
    return plan
