"""Bugs in Barbican's p11_crypto plugin that the HSM qualification found when it met real
modules, each reproduced with Barbican's own code (barbican.plugin.crypto.pkcs11.PKCS11) on a
freshly provisioned token (harness.qualify.barbican_bugs). Pinned as strict xfails of the
known-bugs catalogue: the test states the correct behaviour, so it starts passing (and the
strict xfail fails) the day Barbican is fixed. A reproduction that cannot run at all is a
plain failure, not an xfail (the mark expects BarbicanBug only)."""

from __future__ import annotations

import pytest

from harness.known_bugs import known_bug
from harness.known_bugs.catalogue import get
from harness.qualify.barbican_bugs import REPRODUCTIONS

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("qualify")]


class BarbicanBug(AssertionError):
    """The reproduction ran and Barbican misbehaved."""


@pytest.mark.parametrize("bug_id", [
    pytest.param("function-list-only", id="loads_a_module_exporting_only_its_function_list",
                 marks=known_bug("function-list-only", raises=BarbicanBug)),
    pytest.param("unwrap-template-extractable", id="unwraps_its_project_kek_on_opencryptoki",
                 marks=known_bug("unwrap-template-extractable", raises=BarbicanBug)),
    pytest.param("default-hmac-key-type", id="default_hmac_options_sign",
                 marks=known_bug("default-hmac-key-type", raises=BarbicanBug)),
    pytest.param("gcm-16-byte-iv-unpadding", id="gcm_decrypt_with_a_16_byte_iv_returns_the_secret_unchanged",
                 marks=known_bug("gcm-16-byte-iv-unpadding", raises=BarbicanBug)),
])
def test_barbican_p11_plugin(bug_id):
    outcome = REPRODUCTIONS[bug_id].reproduce()
    assert outcome["correct"] is not None, f"the reproduction could not run: {outcome['observed']}"
    if not outcome["correct"]:
        raise BarbicanBug(f"{get(bug_id).title}\nobserved: {outcome['observed']}\nexpected: {outcome['expected']}")
