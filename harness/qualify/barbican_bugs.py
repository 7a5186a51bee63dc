"""Barbican p11_crypto plugin bugs the qualification found, reproduced with Barbican's own
code (barbican.plugin.crypto.pkcs11.PKCS11, Barbican 23.0.0) on a real module.

Each reproduction runs in a child process of its own, under the module's isolation, with a
freshly provisioned token, and answers what happened next to what should have happened:

    REPRODUCTIONS[bug_id].reproduce() -> {"correct": bool, "observed": str, "expected": str}

`correct` is False while the bug is there (tests/test_barbican_p11_plugin.py pins each one
as a strict xfail: the day Barbican fixes it, the test says so).
"""

from __future__ import annotations

import secrets
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.qualify.workers import call_worker, serve

_COMMON = {"hmac_mechanism": "CKM_SHA256_HMAC", "os_locking_ok": True}


@dataclass(frozen=True)
class Reproduction:
    """How one catalogued bug (harness/known_bugs/catalogue.py says what it is) is reproduced."""
    bug_id: str
    module: str        # the provisioner it is reproduced on

    def reproduce(self, timeout: float = 300) -> dict[str, Any]:
        from harness.qualify.provision import PROVISIONERS

        done = call_worker("harness.qualify.barbican_bugs", self.bug_id, {}, timeout=timeout,
                           argv_prefix=PROVISIONERS[self.module].isolation)
        if done.answer is None:
            return {"correct": None, "observed": f"the reproduction {done.why}", "expected": ""}
        return done.answer


REPRODUCTIONS = {r.bug_id: r for r in (
    Reproduction("function-list-only", "kryoptic"),
    Reproduction("unwrap-template-extractable", "opencryptoki"),
    Reproduction("default-hmac-key-type", "softhsm"),
    Reproduction("gcm-16-byte-iv-unpadding", "softhsm"),
)}


# --------------------------------------------------------------------------------------
# The child side: a fresh token, Barbican's own code
# --------------------------------------------------------------------------------------


def _with_token(module: str, body: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    from harness.qualify.provision import PROVISIONERS

    with tempfile.TemporaryDirectory(prefix=f"barbican-bug-{module}-") as tmp:
        with PROVISIONERS[module](Path(tmp) / "token").provision() as token:
            return body(token)


def _barbican(token, **options):
    from barbican.plugin.crypto import pkcs11 as barbican_pkcs11

    return barbican_pkcs11.PKCS11(library_path=token.module, login_passphrase=token.pin, token_labels=[token.label],
                                  **{"encryption_mechanism": "CKM_AES_CBC", "key_wrap_mechanism": "CKM_AES_CBC_PAD",
                                     **_COMMON, **options})


def _function_list_only(_spec) -> dict[str, Any]:
    def body(token):
        try:
            _barbican(token).finalize()
            return {"correct": True, "observed": "PKCS11() loaded the module", "expected": ""}
        except AttributeError as exc:
            return {"correct": False, "observed": f"AttributeError: {exc}",
                    "expected": "PKCS11() loads a module through its C_GetFunctionList"}
    return _with_token("kryoptic", body)


def _unwrap_template_extractable(_spec) -> dict[str, Any]:
    def body(token):
        from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
        from pkcs11.constants import DEFAULT

        from harness.qualify.module import ckr_name, load_library

        p = _barbican(token, key_wrap_gen_iv=True)
        session = p.get_session()
        mkek = p.generate_key("CKK_AES", 32, "CKM_AES_KEY_GEN", session, key_label=f"bug-{secrets.token_hex(3)}",
                              master_key=True, encrypt=True, wrap=True)
        pkek = p.generate_key("CKK_AES", 32, "CKM_AES_KEY_GEN", session, encrypt=True)
        wrapped = p.wrap_key(mkek, pkek, session)
        try:
            p.unwrap_key(wrapped["key_wrap_mechanism"], mkek, wrapped["iv"], wrapped["wrapped_key"], session)
            observed, correct = "C_UnwrapKey with Barbican's template worked", True
        except Exception as exc:  # noqa: BLE001 - Barbican's exception is the finding
            observed, correct = f"{type(exc).__name__}: {exc}", False
        finally:
            p.destroy_object(mkek, session)
            p.return_session(session)
            p.finalize()
        # The same unwrap without CKA_EXTRACTABLE (python-pkcs11, the same token and mechanism)
        lib, _ = load_library(token.module, True)
        with lib.get_token(token_label=token.label).open(rw=True, user_pin=token.pin) as s:
            key = s.generate_key(KeyType.AES, 256, store=False, template={Attribute.EXTRACTABLE: False})
            inner = s.generate_key(KeyType.AES, 256, store=False, template={Attribute.EXTRACTABLE: True})
            iv = s.generate_random(128)
            blob = key.wrap_key(inner, mechanism=Mechanism.AES_CBC_PAD, mechanism_param=iv)
            template = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
                        Attribute.TOKEN: False, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                        Attribute.ENCRYPT: True, Attribute.DECRYPT: True, Attribute.WRAP: DEFAULT,
                        Attribute.UNWRAP: DEFAULT, Attribute.SIGN: DEFAULT, Attribute.VERIFY: DEFAULT,
                        Attribute.DERIVE: DEFAULT, Attribute.LABEL: DEFAULT, Attribute.ID: DEFAULT}
            try:
                key.unwrap_key(ObjectClass.SECRET_KEY, KeyType.AES, blob, mechanism=Mechanism.AES_CBC_PAD,
                               mechanism_param=iv, store=False, template=template)
                without = "CKR_OK"
            except Exception as exc:  # noqa: BLE001
                without = ckr_name(exc)
        return {"correct": correct, "observed": f"{observed}; the same C_UnwrapKey without CKA_EXTRACTABLE: {without}",
                "expected": "Barbican unwraps the project KEK it wrapped"}
    return _with_token("opencryptoki", body)


def _default_hmac_key_type(_spec) -> dict[str, Any]:
    def body(token):
        p = _barbican(token)         # hmac_mechanism CKM_SHA256_HMAC; the key as gen_hmac makes it by default
        session = p.get_session()
        key = p.generate_key("CKK_AES", 32, "CKM_AES_KEY_GEN", session, key_label=f"bug-{secrets.token_hex(3)}",
                             master_key=True, sign=True)
        try:
            p.compute_hmac(key, secrets.token_bytes(56), session)
            observed, correct = "C_Sign(CKM_SHA256_HMAC) with the CKK_AES key worked", True
        except Exception as exc:  # noqa: BLE001
            observed, correct = f"{type(exc).__name__}: {exc}", False
        finally:
            p.destroy_object(key, session)
            p.return_session(session)
            p.finalize()
        return {"correct": correct, "observed": observed,
                "expected": "Barbican's default HMAC options sign the wrapped project KEKs"}
    return _with_token("softhsm", body)


def _gcm_16_byte_iv_unpadding(_spec) -> dict[str, Any]:
    def body(token):
        p = _barbican(token, encryption_mechanism="CKM_AES_GCM", encryption_gen_iv=False)
        session = p.get_session()
        key = p.generate_key("CKK_AES", 32, "CKM_AES_KEY_GEN", session, encrypt=True)
        secret = secrets.token_bytes(31) + b"\x01"          # a 32-byte key that happens to end in 0x01
        iv = p.ffi.new("CK_BYTE[16]", secrets.token_bytes(16))   # the size of an HSM-generated IV
        mech = p._build_gcm_mechanism(iv)
        p._check_error(p.lib.C_EncryptInit(session, mech.mech, key))
        out_len = p.ffi.new("CK_ULONG *", len(secret) + 16)
        out = p.ffi.new(f"CK_BYTE[{len(secret) + 16}]")
        p._check_error(p.lib.C_Encrypt(session, secret, len(secret), out, out_len))
        ct = p.ffi.buffer(out, out_len[0])[:]
        back = p.decrypt("CKM_AES_GCM", key, p.ffi.buffer(iv)[:], ct, session)
        p.destroy_object(key, session)
        p.return_session(session)
        p.finalize()
        return {"correct": back == secret,
                "observed": f"a {len(secret)}-byte secret ending in 0x01 decrypts to {len(back)} bytes",
                "expected": "PKCS11.decrypt gives the secret back unchanged"}
    return _with_token("softhsm", body)


if __name__ == "__main__":
    sys.exit(serve({"function-list-only": _function_list_only,
                    "unwrap-template-extractable": _unwrap_template_extractable,
                    "default-hmac-key-type": _default_hmac_key_type,
                    "gcm-16-byte-iv-unpadding": _gcm_16_byte_iv_unpadding}, "harness.qualify.barbican_bugs"))
