"""The fault catalog: one small class per incident, each with inject and heal."""

from __future__ import annotations

from harness.faults.api_state import AclRemoval, ConsumerInUseDelete, ContainerMemberDeleted, SecretExpiry
from harness.faults.base import Fault, FaultError
from harness.faults.docker_net import Partition
from harness.faults.hsm import (HsmError, HsmKeyDeleted, HsmLatency, HsmSessionExhaustion, HsmTokenAbsent,
                                HsmWrongPin)
from harness.faults.kek import CryptoPluginRemoved, KekMismatch, KekRotationWithoutRewrap
from harness.faults.network import DbLatency, DbOutage, KeystoneLatency, KeystoneOutage, KmipOutage, QueueOutage
from harness.faults.process import NodeKill, NodePause, WorkerDown
from harness.faults.vault import (VaultLatency, VaultMountDisabled, VaultOutage, VaultPolicyRevoked, VaultSealed,
                                  VaultSecretIdExpired, VaultTokenRevoked)

_CLASSES: list[type[Fault]] = [
    KekMismatch, KekRotationWithoutRewrap, CryptoPluginRemoved,
    HsmLatency, HsmError, HsmWrongPin, HsmTokenAbsent, HsmSessionExhaustion, HsmKeyDeleted,
    AclRemoval, SecretExpiry, ContainerMemberDeleted, ConsumerInUseDelete,
    NodeKill, NodePause, WorkerDown, Partition,
    KeystoneOutage, KeystoneLatency, DbOutage, DbLatency, KmipOutage, QueueOutage,
    VaultSealed, VaultTokenRevoked, VaultSecretIdExpired, VaultPolicyRevoked, VaultMountDisabled,
    VaultOutage, VaultLatency,
]
CATALOG: dict[str, type[Fault]] = {cls.name: cls for cls in _CLASSES}


def register(cls: type[Fault]) -> type[Fault]:
    CATALOG[cls.name] = cls
    return cls


def fault_class(name: str) -> type[Fault]:
    try:
        return CATALOG[name]
    except KeyError:
        raise FaultError(f"unknown fault '{name}'; faults: {', '.join(sorted(CATALOG))}") from None


__all__ = ["CATALOG", "Fault", "FaultError", "fault_class", "register"]
