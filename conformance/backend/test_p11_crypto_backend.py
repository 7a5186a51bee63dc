"""Will Barbican's p11_crypto plugin work on this PKCS#11 module with these options?

Each test replays one thing Barbican does (barbican/plugin/crypto/pkcs11.py, p11_crypto.py,
barbican-manage hsm) through harness.qualify.checks and fails with the option to change.
Tests share one Qualifier: keys made by one check are reused by the next, as Barbican does.
"""

from __future__ import annotations

import json

import allure
import pytest

from harness.qualify.checks import CheckResult

EPIC = "Backend qualification"


def labels(feature: str, story: str, severity=allure.severity_level.CRITICAL):
    def wrap(fn):
        for deco in (allure.epic(EPIC), allure.feature(feature), allure.story(story), allure.severity(severity)):
            fn = deco(fn)
        return fn
    return wrap


def require(*results: CheckResult) -> None:
    """Fail with every failed requirement's message (option, value, what failed, the fix)."""
    allure.attach(json.dumps([r.to_dict() for r in results], indent=2), name="qualification results",
                  attachment_type=allure.attachment_type.JSON)
    failed = [r for r in results if not r.passed]
    if failed:  # the message is the whole story: no traceback of this helper
        pytest.fail("\n".join(r.message() for r in failed), pytrace=False)


@labels("Configuration", "barbican.conf values", allure.severity_level.BLOCKER)
def test_options_are_values_barbican_accepts(qualifier):
    """Barbican validates encryption_mechanism, hmac_mechanism and key_wrap_mechanism at start-up
    (PKCS11.__init__ raises ValueError) and looks hmac_key_type/hmac_keygen_mechanism up in fixed
    tables; booleans and integers must parse. No PKCS#11 call."""
    require(*qualifier.check_options())


@labels("Module", "exported C_* symbols", allure.severity_level.BLOCKER)
def test_module_exports_the_functions_barbican_calls(qualifier):
    """Barbican's cffi binding (ffi.dlopen) looks each C_* function up by symbol name, not via
    C_GetFunctionList, so the library must export all 24 it calls (C_SeedRandom too with seed_file)."""
    require(qualifier.check_symbols())


@labels("Token and session", "token found by label", allure.severity_level.BLOCKER)
def test_token_found_by_label(qualifier):
    """Barbican calls C_Initialize (NULL, or CKF_OS_LOCKING_OK with os_locking_ok), then
    C_GetSlotList(CK_TRUE) and C_GetTokenInfo on every slot, and takes the first token whose label is
    in token_labels (token_serial_number first when set)."""
    require(qualifier.check_token())


@labels("Token and session", "login with the user PIN", allure.severity_level.BLOCKER)
def test_login_with_pin(qualifier):
    """Barbican opens a session (C_OpenSession with CKF_RW_SESSION), reads C_GetSessionInfo and calls
    C_Login(CKU_USER, login) only on a public session; later per-request sessions rely on that login."""
    require(qualifier.check_login())


@labels("Mechanisms", "C_GetMechanismList")
def test_mechanism_listed(qualifier, mechanism_requirement):
    """Barbican never probes mechanisms; it fails at the first C_*Init with CKR_MECHANISM_INVALID.
    Each mechanism the options imply (CKM_AES_KEY_GEN always; encryption_mechanism, key_wrap_mechanism,
    hmac_keygen_mechanism, hmac_mechanism) must be in C_GetMechanismList."""
    require(qualifier.check_mechanism_listed(mechanism_requirement))


@labels("Mechanisms", "C_GetMechanismInfo flags and key sizes")
def test_mechanism_info(qualifier, mechanism_requirement):
    """C_GetMechanismInfo must report the CKF_* flags Barbican's use needs (ENCRYPT/DECRYPT,
    WRAP/UNWRAP, SIGN/VERIFY, GENERATE) and key sizes covering mkek_length, pkek_length (32 bytes)
    and the 32-byte HMAC key."""
    require(qualifier.check_mechanism_info(mechanism_requirement))


@labels("Random numbers", "C_GenerateRandom")
def test_generate_random(qualifier):
    """Barbican runs a 100-byte RNG self-test at start-up (fails if all zeros), draws IVs of 16, 12,
    8 or 4 bytes with C_GenerateRandom, and seeds with C_SeedRandom when seed_file is set."""
    require(qualifier.check_random())


@labels("Keys", "MKEK generation (gen_mkek)", allure.severity_level.BLOCKER)
def test_generate_mkek(qualifier):
    """barbican-manage hsm gen_mkek: C_GenerateKey(CKM_AES_KEY_GEN) of a mkek_length-byte AES token
    key, private, sensitive, non-extractable, ENCRYPT/DECRYPT/WRAP/UNWRAP, with a label."""
    require(qualifier.check_generate_mkek())


@labels("Keys", "HMAC key generation (gen_hmac)", allure.severity_level.BLOCKER)
def test_generate_hmac_key(qualifier):
    """barbican-manage hsm gen_hmac: C_GenerateKey(hmac_keygen_mechanism) of a 32-byte hmac_key_type
    token key, sensitive, non-extractable, SIGN/VERIFY, with a label."""
    require(qualifier.check_generate_hmac_key())


@labels("Keys", "object lookup by label")
def test_find_objects_by_label(qualifier):
    """Barbican finds the MKEK and HMAC key with C_FindObjectsInit(CKA_CLASS, CKA_KEY_TYPE, CKA_LABEL),
    C_FindObjects(max 2), C_FindObjectsFinal; none is an error, two are an error."""
    require(qualifier.check_find_by_label())


@labels("Keys", "project KEK generation", allure.severity_level.BLOCKER)
def test_generate_project_kek(qualifier):
    """For each project Barbican makes a KEK: C_GenerateKey(CKM_AES_KEY_GEN), pkek_length bytes, a
    session object, extractable, CKA_SENSITIVE per always_set_cka_sensitive, ENCRYPT/DECRYPT."""
    require(qualifier.check_generate_pkek())


@labels("Secrets", "encrypt/decrypt with encryption_mechanism", allure.severity_level.BLOCKER)
def test_encrypt_decrypt(qualifier):
    """Every secret is C_EncryptInit+C_Encrypt'ed with the project KEK and encryption_mechanism:
    CKM_AES_CBC with a 16-byte IV over data Barbican pads itself, or CKM_AES_GCM with a 12-byte
    host IV and 128-bit tag (aes_gcm_generate_iv = True) or an HSM-generated IV; decryption
    must give the secret back."""
    require(qualifier.check_encrypt_decrypt())


@labels("Key wrapping", "wrap the project KEK with the MKEK", allure.severity_level.BLOCKER)
def test_wrap_project_kek(qualifier):
    """Barbican wraps each new project KEK with the MKEK: C_WrapKey(key_wrap_mechanism) twice (length
    query, then data), with an IV from C_GenerateRandom when key_wrap_generate_iv = True (16 bytes for
    CBC_PAD, 8 for KEY_WRAP_PAD, 4 for KWP)."""
    require(qualifier.check_wrap())


@labels("Key wrapping", "unwrap the project KEK", allure.severity_level.BLOCKER)
def test_unwrap_project_kek(qualifier):
    """On a pKEK cache miss Barbican calls C_UnwrapKey(key_wrap_mechanism) with the template CKO_SECRET_KEY,
    CKK_AES, TOKEN=False, PRIVATE, SENSITIVE, ENCRYPT, DECRYPT, EXTRACTABLE (no CKA_VALUE_LEN); the
    key must decrypt what the original encrypted."""
    require(qualifier.check_unwrap())


@labels("Integrity", "HMAC sign/verify of wrapped keys", allure.severity_level.BLOCKER)
def test_hmac_sign_verify(qualifier):
    """Barbican signs iv||wrapped_key with the HMAC key (C_SignInit+C_Sign(hmac_mechanism), 32-byte
    buffer) and verifies it (C_VerifyInit+C_Verify) before every unwrap."""
    require(qualifier.check_hmac())


@labels("Keys", "destroy session keys", allure.severity_level.NORMAL)
def test_destroy_session_key(qualifier):
    """When a cached project KEK expires or is evicted Barbican calls C_DestroyObject on it."""
    require(qualifier.check_destroy())


@labels("Concurrency", "parallel sessions", allure.severity_level.CRITICAL)
def test_concurrent_sessions(qualifier):
    """Barbican serves requests from several threads, each opening its own session (C_OpenSession,
    C_GetSessionInfo, C_Encrypt/C_Decrypt, C_CloseSession) on a module initialised once with or
    without CKF_OS_LOCKING_OK (os_locking_ok). 8 threads do so in parallel in a child process; every
    operation must succeed and the process must survive."""
    require(qualifier.check_concurrency(threads=8))
