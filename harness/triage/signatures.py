"""Log signatures an operator greps for, and what each one means.

Each signature maps a line in a Barbican/Keystone log to a category; the first matching
line becomes evidence. Order matters: key-material loss wins over the HSM errors that
accompany it (a deleted MKEK also shows "Reinitializing PKCS#11 library")."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Signature:
    category: str
    pattern: re.Pattern
    meaning: str


def _sig(category: str, pattern: str, meaning: str) -> Signature:
    return Signature(category, re.compile(pattern), meaning)


SIGNATURES: list[Signature] = [
    _sig("kek_mismatch_or_key_loss", r"cryptography\.fernet\.InvalidToken",
         "a project KEK cannot be unwrapped with this node's simple_crypto KEK"),
    _sig("kek_mismatch_or_key_loss", r"SimpleCrypto KEK is undefined", "no simple_crypto KEK configured"),
    _sig("kek_mismatch_or_key_loss", r"Could not find key labeled", "the MKEK or HMAC key is missing from the HSM"),
    _sig("kek_mismatch_or_key_loss", r"CKR_UNWRAPPING_KEY_HANDLE_INVALID", "the MKEK handle is gone from the HSM"),
    _sig("kek_mismatch_or_key_loss", r"CKR_SIGNATURE_INVALID", "a project KEK's HMAC does not verify (wrong HMAC key)"),
    _sig("kek_mismatch_or_key_loss", r"CryptoPluginUnsupportedOperation",
         "the crypto plugin that wrote these secrets is not enabled"),
    _sig("backend_data_lost", r"ManagedObjectNotFoundError|Key not found, uuid",
         "the secret's payload is gone from Vault (KV mount disabled or path deleted)"),
    _sig("hsm_unreachable", r"No token was found in slot|CKR_TOKEN_NOT_PRESENT", "the HSM token is not present"),
    _sig("hsm_unreachable", r"CKR_PIN_INCORRECT|CKR_PIN_LOCKED", "the HSM login (PIN) fails"),
    _sig("hsm_unreachable", r"CKR_SESSION_COUNT", "the HSM refuses new sessions"),
    _sig("hsm_unreachable", r"CKR_DEVICE_ERROR|CKR_GENERAL_ERROR|CKR_DEVICE_REMOVED", "the HSM reports device errors"),
    _sig("hsm_unreachable", r"Token Labels not found|CKR_SLOT_ID_INVALID|cannot load library",
         "the PKCS#11 module or token cannot be found"),
    _sig("auth_outage", r"Unable to validate token|Keystone service is temporarily unavailable",
         "Barbican cannot reach Keystone to validate tokens"),
    _sig("backend_outage", r"OperationalError|Can't connect to MySQL|Lost connection to MySQL|DBConnectionError",
         "Barbican cannot use its database"),
    _sig("backend_outage", r"KMIPSecretStoreError|kmip.*(Connection refused|timed out)", "the KMIP server is unreachable"),
    _sig("backend_access_denied", r"castellan\.common\.exception\.Forbidden|invalid role or secret ID",
         "Vault refuses Barbican: token revoked or expired, policy removed, or AppRole secret_id invalid"),
    _sig("backend_outage", r"KeyManagerError: Service Unavailable", "Vault answers 503: it is sealed"),
    _sig("backend_outage", r"KeyManagerError: HTTPS?ConnectionPool", "Vault is unreachable"),
    _sig("orders_stalled", r"impl_rabbit.*(Connection failed|Connection refused)|AMQP server .* unreachable",
         "the message queue is unreachable"),
]

# Seen while an HSM recovers by itself: evidence of degradation, not of an outage.
REINIT = re.compile(r"Reinitializing PKCS#11 library: (.*)")


def match(line: str) -> Signature | None:
    for sig in SIGNATURES:
        if sig.pattern.search(line):
            return sig
    return None
