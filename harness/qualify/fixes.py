"""Known failures -> the barbican.conf option to change and the fix (the one place these live).

A check that fails names a failure kind (a CKR_* name or one of the kinds below); the table
KNOWN_ISSUES maps (option, value, failure) to the settings that work and why."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from harness.qualify.options import ALLOWED_VALUES, P11Options

# Failure kinds that are not a CKR_* code.
NOT_LISTED = "NOT_IN_MECHANISM_LIST"
FLAG_MISSING = "MECHANISM_FLAG_MISSING"
KEY_SIZE = "KEY_SIZE_NOT_SUPPORTED"
INVALID_VALUE = "INVALID_OPTION_VALUE"
NO_HSM_IV = "NO_HSM_GENERATED_IV"
MISMATCH = "DATA_MISMATCH"
CONCURRENCY = "CONCURRENCY_FAILURE"
NO_TOKEN = "NO_SUCH_TOKEN"
ATTRIBUTE_IGNORED = "ATTRIBUTE_IGNORED"
KEY_NOT_FOUND = "KEY_NOT_FOUND_BY_LABEL"
MISSING_SYMBOL = "MISSING_SYMBOL"
_UNSUPPORTED = frozenset({NOT_LISTED, FLAG_MISSING, "CKR_MECHANISM_INVALID"})


@dataclass(frozen=True)
class KnownIssue:
    """A failure with a known fix: `option` set to `value` (None: any value) fails with one
    of `errors` (CKR_* names or the kinds above; empty: any failure), while the options
    in `when` hold; `fix` lists the settings that work; `why` is the known cause."""

    option: str
    value: str | None
    errors: frozenset[str]
    fix: tuple[tuple[str, str], ...]
    why: str
    when: tuple[tuple[str, str], ...] = ()

    def applies(self, opts: P11Options, option: str, error: str | None) -> bool:
        if option != self.option:
            return False
        if self.value is not None and opts.value(option) != self.value:
            return False
        if self.errors and error not in self.errors:
            return False
        return all(opts.value(o) == v for o, v in self.when)

    def hint(self) -> str:
        if not self.fix:
            return f"no [p11_crypto_plugin] option fixes this: {self.why}"
        settings = " and ".join(f"{o} = {v}" for o, v in self.fix)
        return f"set [p11_crypto_plugin] {settings} ({self.why})"


KNOWN_ISSUES: tuple[KnownIssue, ...] = (
    KnownIssue("key_wrap_mechanism", "CKM_AES_CBC_PAD", _UNSUPPORTED,
               (("key_wrap_mechanism", "CKM_AES_KEY_WRAP_PAD"), ("key_wrap_generate_iv", "False")),
               "the module cannot wrap with CBC_PAD (SoftHSM 2.6.1: CBC_PAD wrapping arrived in 2.7.0); "
               "RFC 5649 CKM_AES_KEY_WRAP_PAD is the widely supported choice"),
    KnownIssue("key_wrap_mechanism", "CKM_AES_KEY_WRAP_KWP", _UNSUPPORTED,
               (("key_wrap_mechanism", "CKM_AES_KEY_WRAP_PAD"), ("key_wrap_generate_iv", "False")),
               "the module has no 0x210B (SoftHSM implements RFC 5649 as CKM_AES_KEY_WRAP_PAD, 0x210A)"),
    KnownIssue("key_wrap_generate_iv", "True",
               frozenset({"CKR_ARGUMENTS_BAD", "CKR_MECHANISM_PARAM_INVALID"}),
               (("key_wrap_generate_iv", "False"),),
               "RFC 5649 wrapping uses its fixed alternative IV; the module rejects an explicit IV",
               when=(("key_wrap_mechanism", "CKM_AES_KEY_WRAP_PAD"),)),
    KnownIssue("key_wrap_generate_iv", "True",
               frozenset({"CKR_ARGUMENTS_BAD", "CKR_MECHANISM_PARAM_INVALID"}),
               (("key_wrap_generate_iv", "False"),),
               "RFC 5649 wrapping uses its fixed alternative IV",
               when=(("key_wrap_mechanism", "CKM_AES_KEY_WRAP_KWP"),)),
    KnownIssue("hmac_key_type", "CKK_AES",
               frozenset({"CKR_KEY_TYPE_INCONSISTENT", "CKR_KEY_FUNCTION_NOT_PERMITTED"}),
               (("hmac_key_type", "CKK_GENERIC_SECRET"), ("hmac_keygen_mechanism", "CKM_GENERIC_SECRET_KEY_GEN")),
               "CKM_SHA256_HMAC takes a generic-secret key (PKCS#11 2.40 2.20); the module refuses to sign with "
               "an AES key",
               when=(("hmac_mechanism", "CKM_SHA256_HMAC"),)),
    KnownIssue("hmac_mechanism", "CKM_AES_MAC", _UNSUPPORTED,
               (("hmac_mechanism", "CKM_SHA256_HMAC"), ("hmac_key_type", "CKK_GENERIC_SECRET"),
                ("hmac_keygen_mechanism", "CKM_GENERIC_SECRET_KEY_GEN")),
               "the module offers no CKM_AES_MAC"),
    KnownIssue("hmac_keygen_mechanism", "CKM_NC_SHA256_HMAC_KEY_GEN", _UNSUPPORTED,
               (("hmac_keygen_mechanism", "CKM_GENERIC_SECRET_KEY_GEN"), ("hmac_key_type", "CKK_GENERIC_SECRET")),
               "CKM_NC_SHA256_HMAC_KEY_GEN is an Entrust nShield vendor mechanism"),
    KnownIssue("hmac_key_type", "CKK_SHA256_HMAC", frozenset(),
               (("hmac_key_type", "CKK_GENERIC_SECRET"), ("hmac_keygen_mechanism", "CKM_GENERIC_SECRET_KEY_GEN")),
               "CKK_SHA256_HMAC keys are an Entrust nShield convention"),
    KnownIssue("hmac_keygen_mechanism", "CKM_AES_KEY_GEN", frozenset({KEY_NOT_FOUND, "CKR_TEMPLATE_INCONSISTENT"}),
               (("hmac_keygen_mechanism", "CKM_GENERIC_SECRET_KEY_GEN"),),
               "CKM_AES_KEY_GEN makes AES keys, so Barbican cannot find an HMAC key of another hmac_key_type"),
    KnownIssue("encryption_mechanism", "VENDOR_SAFENET_CKM_AES_GCM", _UNSUPPORTED,
               (("encryption_mechanism", "CKM_AES_GCM"),),
               "VENDOR_SAFENET_CKM_AES_GCM exists only on older Thales/SafeNet Luna firmware"),
    KnownIssue("encryption_mechanism", "CKM_AES_CBC_GCM", frozenset({INVALID_VALUE}),
               (("encryption_mechanism", "CKM_AES_GCM"),),
               "Barbican's install guide shows CKM_AES_CBC_GCM in its Luna example, but Barbican raises "
               "ValueError('Invalid Encryption mechanism.') for it"),
    KnownIssue("aes_gcm_generate_iv", "False", frozenset(),
               (("aes_gcm_generate_iv", "True"),),
               "with False Barbican expects the HSM to generate the IV and append 16 bytes of it to the "
               "ciphertext (Luna in FIPS mode does); this module does not"),
    KnownIssue("os_locking_ok", "False", frozenset({CONCURRENCY}),
               (("os_locking_ok", "True"),),
               "Barbican calls the module from several threads; initialised without CKF_OS_LOCKING_OK, "
               "SoftHSM 2.6.1 does no locking and corrupts its state (measured: SIGSEGV, SIGABRT, "
               "CKR_GENERAL_ERROR)"),
    KnownIssue("always_set_cka_sensitive", "True",
               frozenset({"CKR_TEMPLATE_INCONSISTENT", "CKR_ATTRIBUTE_VALUE_INVALID", "CKR_KEY_UNEXTRACTABLE",
                          "CKR_KEY_NOT_WRAPPABLE"}),
               (("always_set_cka_sensitive", "False"),),
               "some HSMs (nShield, Trustway Proteccio) cannot make or wrap a key that is both "
               "CKA_SENSITIVE and CKA_EXTRACTABLE"),
    KnownIssue("token_labels", None, frozenset({NO_TOKEN}),
               (("token_labels", "<a label listed by `pkcs11-tool --module MODULE -L`>"),),
               "Barbican raises ValueError('Token Labels not found.') at start-up; token_serial_number "
               "takes precedence when set"),
    KnownIssue("token_serial_number", None, frozenset({NO_TOKEN}),
               (("token_serial_number", "<a serial listed by `pkcs11-tool --module MODULE -L`>"),),
               "Barbican raises ValueError('Token Serial Number not found.') at start-up"),
    KnownIssue("login", None, frozenset({"CKR_PIN_INCORRECT", "CKR_PIN_INVALID", "CKR_PIN_LEN_RANGE"}),
               (("login", "<the token's user PIN>"),),
               "C_Login(CKU_USER) refuses the PIN; a locked or expired PIN must be reset on the HSM"),
    KnownIssue("library_path", None, frozenset({MISSING_SYMBOL}),
               (("library_path", "<a library exporting every C_* symbol: the vendor's module itself, or a module "
                                 "that forwards to it, such as OpenSC's pkcs11-spy.so with PKCS11SPY=<module>>"),),
               "Barbican's cffi binding looks every C_* function up by symbol name; p11-kit-proxy.so, "
               "p11-kit-client.so, Kryoptic and NSS's softoken export only C_GetFunctionList"),
    KnownIssue("key_wrap_mechanism", None, frozenset({"CKR_ATTRIBUTE_READ_ONLY"}), (),
               "Barbican hard-codes CKA_EXTRACTABLE=True in C_UnwrapKey's template, and this module refuses to "
               "set CKA_EXTRACTABLE at unwrap (opencryptoki 3.8's soft token)"),
    *(KnownIssue(option, None, frozenset({"CKR_FUNCTION_NOT_SUPPORTED"}), (),
                 "the module cannot generate secret keys with C_GenerateKey (tpm2-pkcs11 1.9 implements only "
                 "C_GenerateKeyPair), and Barbican generates its MKEK, its HMAC key and every project KEK with it")
      for option in ("mkek_length", "pkek_length", "hmac_keygen_mechanism")),
)


def find_known_issue(opts: P11Options, options: Iterable[str], error: str | None) -> KnownIssue | None:
    for option in options:
        for issue in KNOWN_ISSUES:
            if issue.applies(opts, option, error):
                return issue
    return None


HARD_CODED_HINT = ("Barbican hard-codes this (CKM_AES_KEY_GEN for the MKEK and project KEKs); no barbican.conf "
                   "option avoids it, so the module cannot host the p11_crypto plugin as it is")


def generic_hint(opts: P11Options, option: str | None) -> str | None:
    if option is None:
        return None
    others = [v for v in ALLOWED_VALUES.get(option, ()) if v != opts.value(option)]
    if others:
        return (f"try another value Barbican accepts for [p11_crypto_plugin] {option} "
                f"({', '.join(others)}) that the module supports")
    return None

