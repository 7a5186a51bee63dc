"""Token provisioning, one provisioner per PKCS#11 module (see base.Provisioner for the
interface a vendor implements; softhsm.py is the worked example)."""

from __future__ import annotations

from harness.qualify.provision.base import ModuleUnavailable, Provisioner, Token
from harness.qualify.provision.kryoptic import KryopticProvisioner
from harness.qualify.provision.nss import NssProvisioner
from harness.qualify.provision.opencryptoki import OpencryptokiProvisioner
from harness.qualify.provision.softhsm import SoftHSMProvisioner
from harness.qualify.provision.tpm2 import Tpm2Provisioner

# In the order `qualify-hsm matrix` qualifies them.
PROVISIONERS: dict[str, type[Provisioner]] = {
    p.name: p for p in (SoftHSMProvisioner, OpencryptokiProvisioner, Tpm2Provisioner, KryopticProvisioner,
                        NssProvisioner)
}

__all__ = ["PROVISIONERS", "ModuleUnavailable", "Provisioner", "Token"]
