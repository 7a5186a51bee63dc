"""The gate: does Barbican keep every secret readable along an upgrade path?

1. Every build of the path (harness.builds: a release, a wheel, an sdist, a git commit) is
   installed once per machine; Keystone, MariaDB, SoftHSM ... are always the harness's.
2. The environment comes up on FROM (each node's GET /?build must say FROM).
3. Secrets of every type (opaque, symmetric, passphrase, private, public, certificate, a TLS
   container's members, a LUKS key with a consumer, an order-generated key) are written
   through the integrity ledger on every store of the topology, and verified on FROM.
4. Each hop A → B: preflight before B ever starts (the simple_crypto KEKs A really used,
   its config or its built-in default, against the KEKs B will have: the 2025.2 trap, see
   harness.upgrade.kek); then either every node stops, B's `barbican-manage db upgrade`
   runs on the same database (same SoftHSM token) and B's nodes start, or (--rolling) the
   upgrade runs under load node by node (harness.upgrade.rolling); then every ledger
   secret must read back byte-identical (LedgerChecker, then through every node) and new
   secrets must work on every node and store. A failed hop ends the path.
5. conformance/api on the last build.

The verdict is PASS (exit 0) or FAIL (exit 1); ERROR (exit 2) when the gate could not be
run at all (bad source, install failed, FROM did not come up or cannot keep its own
secrets). pkcs11 topologies need every build >= 20.0.0 (key_wrap_mechanism, for SoftHSM);
the default-KEK trap needs FROM <= 20.x.
"""

from __future__ import annotations

import contextlib
import os
import secrets as _rand
import tempfile
import time
from pathlib import Path

from harness.errors import HarnessError, ServiceStartError
from harness.progress import Progress
from harness.upgrade.evidence import alembic_revision, last_server_error, secret_plugins, server_errors_since
from harness.upgrade.kek import KekSide, configured_keks, kek_continuity
from harness.upgrade.report import GateReport, HopReport
from harness.upgrade.rolling import RollingPlan, rolling_upgrade
from harness.upgrade.secret_checks import CRYPTO_PLUGIN, new_secrets_work, read_through_every_node, \
    seed_every_store, store_refs

REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_ENV = REPO / "environments" / "simple-crypto.yaml"
DEFAULT_ROLLING_ENV = REPO / "environments" / "simple-crypto-3.yaml"
FROM_CONFIGS = ("harness", "default-kek")
BREAK_MODES = ("none", "kek-change")
SIMPLE_CRYPTO_CLASS = "barbican.plugin.crypto.simple_crypto.SimpleCryptoPlugin"
ROLLING_MIN_NODES = 3
CONFORMANCE_TIMEOUT = float(os.environ.get("BARBICAN_HARNESS_UPGRADE_CONFORMANCE_TIMEOUT", "1800"))


class FromBroken(HarnessError):
    """FROM itself cannot do what the gate needs (e.g. store on every store): the upgrade
    cannot be judged (verdict ERROR)."""


class _Steps(Progress):
    """The report's step list; also the progress of the environment's own steps (echoed)."""

    def __init__(self, report: GateReport, echo):
        super().__init__()
        self.report, self.echo = report, echo

    def started(self, name: str) -> None:
        self.echo(f"  … {name}")

    @contextlib.contextmanager
    def gate_step(self, name: str):
        start = time.monotonic()
        self.echo(f"… {name}")
        entry = {"step": name, "ok": False}
        self.report.steps.append(entry)
        try:
            yield entry
            entry["ok"] = entry.pop("ok_override", True)
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
            raise
        finally:
            entry["seconds"] = round(time.monotonic() - start, 1)
            self.echo(f"{'✓' if entry['ok'] else '✗'} {name} ({entry['seconds']} s)")


def run_gate(path: list[str], env_path: str | Path | None = None, *, provider: str | None = None,
             from_config: str = "harness", break_mode: str = "none", conformance: bool = True,
             rolling: RollingPlan | None = None, echo=None) -> GateReport:
    """Gate the upgrade along `path` (sources, FROM first); never leaves a process running.
    The report is also written to the run directory (upgrade-gate.json, upgrade-gate.txt)
    and report.html is built there."""
    from harness.builds import parse_source, resolve
    from harness.environment import Environment, new_run_id, runs_dir
    from harness.topology import load_topology

    echo = echo or (lambda msg: None)
    t0 = time.monotonic()
    env_path = Path(env_path or (DEFAULT_ROLLING_ENV if rolling else DEFAULT_ENV))
    report = GateReport(list(path), env_path.stem, from_config=from_config, break_mode=break_mode,
                        rolling=rolling is not None)
    steps = _Steps(report, echo)
    env = None
    try:
        if len(path) < 2:
            raise HarnessError(f"an upgrade path needs at least two builds (FROM and TO), got {list(path)}")
        if from_config not in FROM_CONFIGS:
            raise HarnessError(f"--from-config must be one of {', '.join(FROM_CONFIGS)}, got '{from_config}'")
        if break_mode not in BREAK_MODES:
            raise HarnessError(f"--break must be one of {', '.join(BREAK_MODES)}, got '{break_mode}'")
        topology = load_topology(env_path)
        if provider:
            topology = topology.model_copy(update={"provider": provider})
        report.topology, report.provider = topology.name, topology.provider
        if (from_config == "default-kek" or break_mode == "kek-change") and "simple_crypto" not in topology.backends:
            raise HarnessError(f"{env_path}: --from-config default-kek and --break kek-change need a "
                               f"simple_crypto store; stores: {topology.backends}")
        if rolling and topology.barbican.nodes < ROLLING_MIN_NODES:
            raise HarnessError(f"{env_path}: --rolling needs {ROLLING_MIN_NODES} or more API nodes (barbican.nodes "
                               f"is {topology.barbican.nodes}); e.g. environments/simple-crypto-3.yaml")
        sources = [parse_source(s, what=f"upgrade path entry {i + 1}") for i, s in enumerate(path)]
        _check_order([(s.version, s.spec) for s in sources])  # what is known before installing

        with steps.gate_step("Barbican builds (venvs, installed once per machine)"):
            builds = [resolve(s, log=echo).ensure_facts() for s in sources]
            report.builds = [b.describe() for b in builds]
        _check_order([(b.version, b.label) for b in builds])
        too_old = [b.label for b in builds if not b.p11_key_wrap_mechanism]
        if "pkcs11" in topology.backends and topology.hsm.module == "softhsm" and too_old:
            raise HarnessError(
                f"{env_path.name}: Barbican {', '.join(too_old)}'s p11_crypto has no key_wrap_mechanism option "
                f"(added in 20.0.0): it wraps project KEKs with CKM_AES_CBC_PAD, which SoftHSM 2.6.1 rejects "
                f"(CKR_MECHANISM_INVALID); gate pkcs11 topologies from 20.0.0 on")
        if from_config == "default-kek" and not builds[0].kek_default:
            raise HarnessError(f"--from-config default-kek: Barbican {builds[0].label} has no built-in default KEK "
                               f"(removed in 21.0.0), so simple_crypto cannot run without a kek line")

        from_overrides = {"keks": []} if from_config == "default-kek" else {}
        run_id = new_run_id(topology)
        report.run_id, report.run_dir = run_id, str(runs_dir() / run_id)
        with steps.gate_step(f"environment up on FROM {builds[0].label}"):
            env = Environment.up(env_path, provider=topology.provider, run_id=run_id, barbican=sources[0].spec,
                                 barbican_overrides=from_overrides, progress=steps)
            report.from_versions = env.state.get("node_versions", {})
            # The environment's build is FROM's, as installed and asked (with its image on docker).
            builds[0].image = env.ctx.barbican_build.image
            env.ctx.build = builds[0]
            report.builds[0] = builds[0].describe()
    except HarnessError as exc:
        report.error = str(exc)
        if report.run_dir and (Path(report.run_dir) / "logs").is_dir():
            report.error += f"; last server error: {last_server_error(Path(report.run_dir) / 'logs')}"
        report.failures.append(report.error)
        _finish(report, env, t0)
        return report
    except BaseException:
        _finish(report, env, t0, down_only=True)
        raise

    try:
        _gate_body(env, report, steps, builds, from_overrides, break_mode, conformance, rolling, echo)
    except FromBroken as exc:
        report.error = str(exc)
        report.failures.append(str(exc))
        _finish(report, env, t0)
        return report
    except HarnessError as exc:
        report.failures.append(f"harness: {exc}")
    except Exception as exc:  # noqa: BLE001 - the verdict is FAIL with the reason; the env goes down
        report.failures.append(f"{type(exc).__name__}: {str(exc)[:500]}")
    except BaseException:
        _finish(report, env, t0, down_only=True)
        raise
    if rolling:
        report.zero_downtime = all(h.rolling.get("zero_downtime") for h in report.hops) and \
            len(report.hops) == len(builds) - 1
    report.verdict = "FAIL" if report.failures else "PASS"
    report.exit_code = 1 if report.failures else 0
    _finish(report, env, t0)
    return report


def _check_order(versions: list[tuple[str | None, str]]) -> None:
    from harness.builds import version_key

    known = [(v, name) for v, name in versions if v]
    for (va, a), (vb, b) in zip(known, known[1:]):
        if version_key(vb) < version_key(va):
            raise HarnessError(f"{b} ({vb}) is older than {a} ({va}): the gate upgrades, it does not downgrade")


def _gate_body(env, report: GateReport, steps: _Steps, builds: list, from_overrides: dict, break_mode: str,
               conformance: bool, rolling: RollingPlan | None, echo) -> None:
    from harness import redact
    from harness.context import fernet_key
    from harness.ledger import Ledger, LedgerChecker

    topo = env.ctx.topology
    first = builds[0]
    ledger = Ledger(env.run_dir / "ledger", prefix=f"upgrade-{_rand.token_hex(3)}")

    with steps.gate_step("seed secrets of every type on every store (ledger)"):
        try:
            seeded = seed_every_store(env, ledger)
        except Exception as exc:  # noqa: BLE001 - FROM cannot be used: reported as such
            raise FromBroken(f"FROM {first.label} cannot store secrets on every store of {topo.name}: "
                             f"{str(exc)[:300]}; last server error: {last_server_error(env)}") from None
        report.seeded = {
            "count": len(seeded.store),
            "per_store": {s.name: sum(1 for v in seeded.store.values() if v == s.name) for s in topo.stores},
            "per_type": _count(seeded.types.values()),
            "ledger": str(ledger.directory), "prefix": ledger.prefix,
        }
    with steps.gate_step(f"verify the ledger on FROM {first.label}"):
        baseline = LedgerChecker(ledger, env).check()
        report.from_verification = baseline.summary()
        if not baseline.ok or baseline.unreadable:
            raise FromBroken(f"FROM {first.label} itself does not read back its secrets: lost {baseline.lost}, "
                             f"corrupted {baseline.corrupted}; last server error: {last_server_error(env)}")

    # What the database says each secret is wrapped by (the secrets at risk of a KEK change).
    plugins = secret_plugins(env)
    refs = {ref.rstrip("/").rsplit("/", 1)[-1]: ref for ref in seeded.store}
    if plugins:
        held = {ref: plugins.get(sid, "none (no encrypted_data: a store without crypto plugin)")
                for sid, ref in refs.items()}
        report.seeded["per_crypto_plugin"] = _count(held.values())
        misplaced = {ref: f"{seeded.store[ref]} → {plugin}" for ref, plugin in held.items()
                     if CRYPTO_PLUGIN[seeded.backend[ref]] and CRYPTO_PLUGIN[seeded.backend[ref]] not in plugin}
        if misplaced:
            raise FromBroken(f"seeded secrets did not land in their store: {misplaced}")
        simple = sorted(ref for ref, plugin in held.items() if plugin == SIMPLE_CRYPTO_CLASS)
    else:
        simple = sorted(ref for ref, b in seeded.backend.items() if b == "simple_crypto")

    overrides = from_overrides
    for i, (old, new) in enumerate(zip(builds, builds[1:]), 1):
        to_overrides = dict(overrides)
        if break_mode == "kek-change" and i == len(builds) - 1:  # TO, the path's last build, gets another KEK
            new_kek = fernet_key()
            redact.register(new_kek)
            to_overrides["keks"] = [new_kek]
        hop = HopReport(old.label, new.label, "rolling" if rolling else "offline")
        report.hops.append(hop)
        hop.db_revision["before"] = alembic_revision(env)
        _preflight(env, hop, steps, old, new, to_overrides, simple, echo)
        to_started = time.strftime("%Y-%m-%d %H:%M:%S")
        if rolling:
            with steps.gate_step(f"rolling upgrade {old.label} → {new.label} under load ({rolling.users} users)") as st:
                hop.rolling = rolling_upgrade(env, old, new, to_overrides, rolling,
                                              env.run_dir / "load" / f"rolling-hop-{i}", progress=steps)
                st["ok_override"] = hop.rolling["zero_downtime"]
            if not hop.rolling["zero_downtime"]:
                hop.failures.append(f"rolling {old.label} → {new.label} is not zero-downtime: "
                                    + " | ".join(_why_not_zero_downtime(hop.rolling)))
        elif not _offline_upgrade(env, hop, steps, old, new, to_overrides):
            report.failures += hop.failures
            return
        hop.db_revision["after"] = alembic_revision(env)
        _verify_hop(env, hop, steps, ledger, seeded, first, new, to_started)
        report.builds[i] = new.describe()  # with its image, on docker
        hop.ok = not hop.failures
        report.failures += hop.failures
        overrides = to_overrides
        if hop.failures:
            if i < len(builds) - 1:
                report.failures.append(f"the path stops at {new.label}: {len(builds) - 1 - i} hop(s) not run")
            break

    if not conformance:
        report.conformance = {"ran": False, "reason": "disabled"}
    elif report.failures:
        report.conformance = {"ran": False, "reason": "the gate already failed"}
    else:
        from harness.conformance_run import run_conformance

        env.state["status"] = "up"
        env.save_state()
        with steps.gate_step(f"conformance/api on TO {builds[-1].label}") as st:
            result = run_conformance(env, ["conformance/api"], out_dir=env.run_dir, name="upgrade-conformance",
                                     timeout=CONFORMANCE_TIMEOUT)
            report.conformance = {"ran": True, **result.to_dict()}
            if not result.ok:
                st["ok_override"] = False
                report.failures.append(f"conformance/api on TO: {result.summary}: {result.failed_tests[:10]}")


def _why_not_zero_downtime(rolling: dict) -> list[str]:
    why = [f"{p['phase']}: {'; '.join(p['breaches'] + ([p['error']] if p.get('error') else []))}"
           for p in rolling["phases"] if not p["ok"]]
    why += rolling["load"]["errors"][:3]
    if rolling["finished_after_load"]:
        why.append(f"replaced after the load: {', '.join(rolling['finished_after_load'])}")
    led = rolling["load"].get("ledger") or {}
    if not led.get("ok"):
        why.append("load ledger: " + (", ".join(f"{k} {len(led.get(k, []))}" for k in
                                                ("lost", "corrupted", "resurrected", "unexpected") if led.get(k))
                                      or "not checked"))
    return why


def _preflight(env, hop: HopReport, steps: _Steps, old, new, to_overrides: dict, simple: list[str], echo) -> None:
    """simple_crypto KEK continuity, before `new` starts: from the nodes' configs as they are
    and `new`'s configs as they will be rendered."""
    provider = env.provider
    with steps.gate_step(f"preflight: simple_crypto KEK continuity {old.label} → {new.label}") as st:
        if "simple_crypto" not in env.ctx.topology.backends:
            hop.preflight = {"ok": True, "findings": [], "note": "no simple_crypto store"}
            return
        from_side = KekSide(old.version, {n.name: configured_keks(n.home / ".barbican" / "barbican.conf")
                                          for n in provider.nodes}, old.kek_default)
        preview = {}
        with tempfile.TemporaryDirectory(dir=env.run_dir) as tmp:
            for n in provider.nodes:
                conf = provider.config.render(Path(tmp) / n.name, n.name, n.url, to_overrides, new)
                preview[n.name] = configured_keks(conf)
        hop.preflight = kek_continuity(from_side, KekSide(new.version, preview, new.kek_default), simple)
        for finding in hop.preflight["findings"]:
            echo(("warning: " if finding.get("warning") else "preflight: ") + finding["message"])
        blocking = [f for f in hop.preflight["findings"] if not f.get("warning")]
        if blocking:
            st["ok_override"] = False
            kinds = sorted({f["kind"] for f in blocking})
            hop.failures.append(
                f"preflight ({', '.join(kinds)}), before {new.label} started: {blocking[0]['message']} "
                f"(at risk: {len(simple)} secrets, listed in preflight.at_risk_secrets)")


def _offline_upgrade(env, hop: HopReport, steps: _Steps, old, new, to_overrides: dict) -> bool:
    """Every Barbican process stops; `new`'s schema upgrade; every process starts on `new`.
    False when the schema upgrade failed (nothing can be verified then)."""
    provider = env.provider
    services = (*provider.nodes, *provider.workers)
    with steps.gate_step(f"stop Barbican {old.label}"):
        for service in reversed(services):
            service.stop()
            service.processes.clear()
        env.save_state()
    provider.prepare_build(new)
    with steps.gate_step(f"barbican-manage db upgrade ({new.label}, same database)") as st:
        try:
            provider.nodes[0].manage("db", "upgrade", timeout=300, build=new)
        except ServiceStartError as exc:
            st["ok_override"] = False
            hop.failures.append(f"{new.label}'s barbican-manage db upgrade failed: {exc}")
            return False
    env.ctx.build = new
    for service in services:
        service.build, service.overrides = None, dict(to_overrides)
    with steps.gate_step(f"start Barbican {new.label}") as st:
        for service in services:
            service.render()
            service.start()
        env.save_state()
        start_errors = {}
        for service in services:
            try:
                service.wait_healthy(90)
            except ServiceStartError as exc:
                start_errors[service.name] = str(exc)[:600]
        if start_errors:
            st["ok_override"] = False
            st["start_errors"] = start_errors
            why = sorted({e.split("\n")[0].split(": ", 1)[-1] for e in start_errors.values()})
            hop.failures.append(f"{new.label} did not start on {', '.join(start_errors)}: {'; '.join(why)} "
                                f"(logs/<node>.log; server errors under verification.server_errors)")
    return True


def _verify_hop(env, hop: HopReport, steps: _Steps, ledger, seeded, first, new, since: str) -> None:
    """After a hop: every node runs `new`, every seeded secret reads back byte-identical
    (ledger, then through every node), new secrets work on every node and store."""
    from harness.ledger import LedgerChecker

    hop.versions = env.state["node_versions"] = env.barbican_versions()
    wrong = {n: v for n, v in hop.versions.items() if v != new.version}
    if wrong:
        hop.failures.append(f"nodes do not run Barbican {new.label} after the hop: {wrong}")
    with steps.gate_step(f"verify every seeded secret on {new.label}") as st:
        acknowledged = sorted(e.ref for e in ledger.entries() if e.op == "create" and e.outcome == "ok" and e.ref)
        try:
            result = LedgerChecker(ledger, env).check()
            hop.verification = result.summary()
        except Exception as exc:  # noqa: BLE001 - e.g. TO not answering: every node is read below
            result = None
            hop.verification = {"ledger_checker_error": f"{type(exc).__name__}: {str(exc)[:300]}",
                                "acknowledged": len(acknowledged)}
        per_node = read_through_every_node(env, ledger)
        hop.verification["through_every_node"] = per_node
        unreadable = dict(result.unreadable) if result else {}
        for ref in result.corrupted if result else ():
            unreadable.setdefault(ref, "payload differs")
        for ref, why in per_node.items():
            unreadable.setdefault(ref, "; ".join(f"{n}: {w}" for n, w in why.items()))
        hop.verification["server_errors"] = server_errors_since(env.ctx.logs_dir, since)
        hop.unreadable_secrets = {
            ref: f"{why} [{seeded.store.get(ref, '?')}/{seeded.backend.get(ref, '?')}, {seeded.types.get(ref, '?')}]"
            for ref, why in sorted(unreadable.items())}
        if unreadable or result is None or not result.ok:
            st["ok_override"] = False
            by_backend = _count(seeded.backend.get(r, "?") for r in unreadable)
            cause = next(iter(hop.verification["server_errors"]), None)
            hop.failures.append(
                f"{new.label} cannot read back {len(unreadable)} of {len(acknowledged)} secrets "
                f"written on FROM {first.label} ({', '.join(f'{b}: {n}' for b, n in sorted(by_backend.items()))}"
                + (f"; server: {cause}" if cause else "") + "): " + ", ".join(sorted(unreadable)))
            if result and (result.unexpected or result.resurrected):
                hop.failures.append(f"unexpected {result.unexpected}, resurrected {result.resurrected}")

    with steps.gate_step(f"new secrets on {new.label} (every node and store)") as st:
        try:
            stores = store_refs(env) if env.ctx.topology.multiple_stores else None
            errors = new_secrets_work(env, stores)
        except Exception as exc:  # noqa: BLE001 - e.g. TO not answering at all
            errors = {"secret-stores": f"{type(exc).__name__}: {str(exc)[:160]}"}
        hop.new_operations = {"ok": not errors, "errors": errors}
        if errors:
            st["ok_override"] = False
            hop.failures.append(f"new secrets fail on {new.label}: {errors}")


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _finish(report: GateReport, env, t0: float, down_only: bool = False) -> None:
    if env is not None:
        try:
            busy = env.down()
            if busy:
                report.failures.append(f"ports still busy after down: {busy}")
        except Exception as exc:  # noqa: BLE001
            report.failures.append(f"down: {exc}")
    if down_only:
        return
    report.seconds = round(time.monotonic() - t0, 1)
    if report.run_dir and Path(report.run_dir).is_dir():
        report.write()
        with contextlib.suppress(Exception):  # the gate's own files are written; the page is extra
            from harness.report import build_report

            report.report_html = str(build_report(report.run_dir))
            report.write()
