"""Bugs in Barbican's p11_crypto plugin that the HSM qualification found when it met real
modules, each reproduced with Barbican's own code (barbican.plugin.crypto.pkcs11.PKCS11) on a
freshly provisioned token (harness.qualify.barbican_bugs). Pinned as strict xfails: the test
states the correct behaviour, so it starts passing (and the strict xfail fails) the day
Barbican is fixed. A reproduction that cannot run at all is a plain failure, not an xfail."""

from __future__ import annotations

import pytest

from harness.qualify.barbican_bugs import BUGS

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("qualify")]


class BarbicanBug(AssertionError):
    """The reproduction ran and Barbican misbehaved."""


# test id -> the bug; each test states the correct behaviour
CASES = {
    "loads_a_module_exporting_only_its_function_list": "function-list-only",
    "unwraps_its_project_kek_on_opencryptoki": "unwrap-template-extractable",
    "default_hmac_options_sign": "default-hmac-key-type",
    "gcm_decrypt_with_a_16_byte_iv_returns_the_secret_unchanged": "gcm-16-byte-iv-unpadding",
}


@pytest.mark.parametrize("name", [
    pytest.param(bug, id=test_id, marks=pytest.mark.xfail(strict=True, raises=BarbicanBug, reason=BUGS[bug].summary))
    for test_id, bug in CASES.items()])
def test_barbican_p11_plugin(name):
    outcome = BUGS[name].reproduce()
    assert outcome["correct"] is not None, f"the reproduction could not run: {outcome['observed']}"
    if not outcome["correct"]:
        raise BarbicanBug(f"{BUGS[name].summary}\nobserved: {outcome['observed']}\nexpected: {outcome['expected']}")
