"""The campaign: the README's main job. It grows as the harness does; today it brings up
each topology of the profile, proves a byte-identical round trip between every pair of
nodes on every store, and tears the environment down."""

from __future__ import annotations

import datetime as dt
import json
import secrets as _rand
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.environment import Environment, runs_dir
from harness.errors import HarnessError
from harness.progress import Progress

ENVIRONMENTS = Path(__file__).resolve().parent.parent / "environments"

PROFILES = {
    "quick": ["simple-crypto", "pkcs11-softhsm"],
    "full": ["simple-crypto", "pkcs11-softhsm", "multi-store", "kmip", "async-orders",
             "simple-crypto-secure-rbac"],
}


@dataclass
class StepResult:
    environment: str
    passed: bool
    up_seconds: float = 0.0
    checks: list[str] = field(default_factory=list)
    error: str = ""


def round_trips(env: Environment) -> list[str]:
    """Store through each node, read back through every node, byte for byte."""
    done = []
    for writer in env.nodes:
        payload = _rand.token_bytes(32)
        client = env.barbican(node=writer.name)
        # bytes → barbicanclient sends application/octet-stream, base64-encoded.
        ref = client.secrets.create(name=f"campaign-{writer.name}", payload=payload).store()
        try:
            for reader in env.nodes:
                got = env.barbican(node=reader.name).secrets.get(ref).payload
                if got != payload:
                    raise HarnessError(f"{writer.name} → {reader.name}: payload differs")
                done.append(f"{writer.name} → {reader.name}: byte-identical")
        finally:
            client.secrets.delete(ref)
    return done


def run_campaign(profile: str, progress: Progress | None = None) -> tuple[bool, Path, list[StepResult]]:
    if profile not in PROFILES:
        raise HarnessError(f"unknown profile '{profile}'; profiles: {', '.join(PROFILES)}")
    progress = progress or Progress()
    out_dir = runs_dir() / f"campaign-{profile}-{dt.datetime.now():%Y%m%d-%H%M%S}-{_rand.token_hex(2)}"
    out_dir.mkdir(parents=True)
    results = []
    for name in PROFILES[profile]:
        result = StepResult(name, passed=False)
        start = time.monotonic()
        try:
            with progress.step(f"{name}: up"):
                env = Environment.up(ENVIRONMENTS / f"{name}.yaml", progress=progress)
            result.up_seconds = round(time.monotonic() - start, 1)
            try:
                with progress.step(f"{name}: round trips on every node"):
                    result.checks = round_trips(env)
                result.passed = True
            finally:
                with progress.step(f"{name}: down"):
                    env.down()
        except HarnessError as exc:
            result.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a client error is a failed check, reported
            result.error = f"{type(exc).__name__}: {exc}"
        results.append(result)
    ok = all(r.passed for r in results)
    (out_dir / "campaign.json").write_text(json.dumps(
        {"profile": profile, "passed": ok, "results": [asdict(r) for r in results]}, indent=2))
    return ok, out_dir, results
