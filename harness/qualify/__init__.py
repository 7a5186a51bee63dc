"""Qualification of the back ends Barbican depends on (PKCS#11 modules first).

`harness.qualify.p11` answers: "will Barbican's p11_crypto plugin work on this PKCS#11
module with these barbican.conf options?" The pytest suite in conformance/backend/ is a
thin layer over it, and a `qualify-hsm` command can reuse the same API.
"""

from harness.qualify.p11 import (
    BARBICAN_DEFAULTS,
    KNOWN_ISSUES,
    CheckResult,
    KnownIssue,
    MechanismRequirement,
    P11Options,
    Qualifier,
    Target,
    ThrowawaySoftHSM,
    load_options,
    required_mechanisms,
)

__all__ = [
    "BARBICAN_DEFAULTS",
    "KNOWN_ISSUES",
    "CheckResult",
    "KnownIssue",
    "MechanismRequirement",
    "P11Options",
    "Qualifier",
    "Target",
    "ThrowawaySoftHSM",
    "load_options",
    "required_mechanisms",
]
