"""Barbican's [p11_crypto_plugin] option model: the options, their defaults and the values
Barbican accepts (barbican/plugin/crypto/p11_crypto.py and pkcs11.py, Barbican 23.0.0), the
mechanisms those values select, and reading them from an ini/barbican.conf or YAML file."""

from __future__ import annotations

import configparser
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pkcs11 import KeyType

BARBICAN_DEFAULTS: dict[str, Any] = {
    "library_path": None,
    "token_serial_number": None,
    "token_labels": [],
    "login": None,
    "mkek_label": None,
    "mkek_length": 32,
    "hmac_label": None,
    "slot_id": 1,
    "rw_session": True,
    "pkek_length": 32,
    "pkek_cache_ttl": 900,
    "pkek_cache_limit": 100,
    "encryption_mechanism": "CKM_AES_CBC",
    "hmac_key_type": "CKK_AES",
    "hmac_keygen_mechanism": "CKM_AES_KEY_GEN",
    "hmac_mechanism": "CKM_SHA256_HMAC",
    "key_wrap_mechanism": "CKM_AES_CBC_PAD",
    "key_wrap_generate_iv": True,
    "seed_file": "",
    "seed_length": 32,
    "plugin_name": "PKCS11 HSM",
    "aes_gcm_generate_iv": True,
    "always_set_cka_sensitive": True,
    "os_locking_ok": False,
}
DEPRECATED_NAMES = {"hmac_keywrap_mechanism": "hmac_mechanism", "generate_iv": "aes_gcm_generate_iv"}
_INT_OPTIONS = {"mkek_length", "slot_id", "pkek_length", "pkek_cache_ttl", "pkek_cache_limit", "seed_length"}
_BOOL_OPTIONS = {"rw_session", "key_wrap_generate_iv", "aes_gcm_generate_iv", "always_set_cka_sensitive",
                 "os_locking_ok"}
_LIST_OPTIONS = {"token_labels"}
SECRET_OPTIONS = {"login"}

# The values Barbican accepts (anything else fails at start-up or at first use).
ALLOWED_VALUES: dict[str, tuple[str, ...]] = {
    "encryption_mechanism": ("CKM_AES_CBC", "CKM_AES_GCM", "VENDOR_SAFENET_CKM_AES_GCM"),
    "hmac_key_type": ("CKK_AES", "CKK_GENERIC_SECRET", "CKK_SHA256_HMAC"),
    "hmac_keygen_mechanism": ("CKM_AES_KEY_GEN", "CKM_NC_SHA256_HMAC_KEY_GEN", "CKM_GENERIC_SECRET_KEY_GEN"),
    "hmac_mechanism": ("CKM_SHA256_HMAC", "CKM_AES_MAC"),
    "key_wrap_mechanism": ("CKM_AES_CBC_PAD", "CKM_AES_KEY_WRAP_PAD", "CKM_AES_KEY_WRAP_KWP"),
}
# What Barbican does with a value outside ALLOWED_VALUES.
_INVALID_VALUE_EFFECT = {
    "encryption_mechanism": "PKCS11() raises ValueError('Invalid Encryption mechanism.') at start-up",
    "hmac_mechanism": "PKCS11() raises ValueError('Invalid HMAC signing mechanism.') at start-up",
    "key_wrap_mechanism": "PKCS11() raises ValueError('Invalid Key Wrapping mechanism.') at start-up",
    "hmac_key_type": "the HMAC key lookup raises KeyError (not in _KEY_TYPES) at the first secret",
    "hmac_keygen_mechanism": "barbican-manage hsm gen_hmac raises KeyError (not in _KEY_GEN_MECHANISMS)",
}

MECHANISMS: dict[str, int] = {
    "CKM_AES_KEY_GEN": 0x1080,
    "CKM_AES_CBC": 0x1082,
    "CKM_AES_MAC": 0x1083,
    "CKM_AES_CBC_PAD": 0x1085,
    "CKM_AES_GCM": 0x1087,
    "CKM_AES_KEY_WRAP_PAD": 0x210A,
    "CKM_AES_KEY_WRAP_KWP": 0x210B,
    "CKM_GENERIC_SECRET_KEY_GEN": 0x350,
    "CKM_SHA256_HMAC": 0x251,
    "VENDOR_SAFENET_CKM_AES_GCM": 0x8000011C,
    "CKM_NC_SHA256_HMAC_KEY_GEN": 0xDE436997,
}
KEY_TYPES: dict[str, KeyType] = {
    "CKK_AES": KeyType.AES,
    "CKK_GENERIC_SECRET": KeyType.GENERIC_SECRET,
    "CKK_SHA256_HMAC": KeyType.SHA256_HMAC,
}
# IV Barbican generates with C_GenerateRandom when key_wrap_generate_iv = True (pkcs11.wrap_key).
KEY_WRAP_IV_BYTES = {"CKM_AES_CBC_PAD": 16, "CKM_AES_KEY_WRAP_PAD": 8, "CKM_AES_KEY_WRAP_KWP": 4}
HMAC_KEY_BYTES = 32          # barbican-manage hsm gen_hmac --length default
CBC_IV_BYTES = 16            # pkcs11._CBC_IV_SIZE
GCM_NONCE_BYTES = 12         # PKCS11.noncesize
GCM_TAG_BYTES = 16           # PKCS11.gcmtagsize (ulTagBits = 128)
HMAC_SIGNATURE_BUFFER = 32   # compute_hmac passes a 32-byte buffer to C_Sign
RNG_SELF_TEST_BYTES = 100    # PKCS11._rng_self_test

# Every C_* function Barbican's cffi binding calls, looked up by symbol name (ffi.dlopen).
BARBICAN_CALLS = (
    "C_Initialize", "C_Finalize", "C_GetSlotList", "C_GetTokenInfo", "C_OpenSession",
    "C_CloseSession", "C_GetSessionInfo", "C_Login", "C_GenerateRandom", "C_FindObjectsInit",
    "C_FindObjects", "C_FindObjectsFinal", "C_GenerateKey", "C_WrapKey", "C_UnwrapKey",
    "C_EncryptInit", "C_Encrypt", "C_DecryptInit", "C_Decrypt", "C_SignInit", "C_Sign",
    "C_VerifyInit", "C_Verify", "C_DestroyObject",
)
SEED_CALL = "C_SeedRandom"  # only when seed_file is set


_TRUE = {"1", "t", "true", "on", "y", "yes"}
_FALSE = {"0", "f", "false", "off", "n", "no"}


@dataclass(frozen=True)
class OptionProblem:
    option: str
    value: str
    reason: str


@dataclass(frozen=True)
class P11Options:
    """[p11_crypto_plugin] options; anything not given takes Barbican's own default."""

    library_path: str | None = None
    token_serial_number: str | None = None
    token_labels: tuple[str, ...] = ()
    login: str | None = field(default=None, repr=False)
    mkek_label: str | None = None
    mkek_length: int = 32
    hmac_label: str | None = None
    slot_id: int = 1
    rw_session: bool = True
    pkek_length: int = 32
    pkek_cache_ttl: int = 900
    pkek_cache_limit: int = 100
    encryption_mechanism: str = "CKM_AES_CBC"
    hmac_key_type: str = "CKK_AES"
    hmac_keygen_mechanism: str = "CKM_AES_KEY_GEN"
    hmac_mechanism: str = "CKM_SHA256_HMAC"
    key_wrap_mechanism: str = "CKM_AES_CBC_PAD"
    key_wrap_generate_iv: bool = True
    seed_file: str = ""
    seed_length: int = 32
    plugin_name: str = "PKCS11 HSM"
    aes_gcm_generate_iv: bool = True
    always_set_cka_sensitive: bool = True
    os_locking_ok: bool = False
    # Bookkeeping: which options were given, and what could not be used as given.
    explicit: frozenset[str] = frozenset()
    problems: tuple[OptionProblem, ...] = ()
    source: str = "Barbican's defaults"

    @classmethod
    def from_mapping(cls, mapping: dict[str, Any], source: str = "options") -> P11Options:
        values: dict[str, Any] = {}
        problems: list[OptionProblem] = []
        explicit: set[str] = set()
        for raw_name, raw in mapping.items():
            name = DEPRECATED_NAMES.get(str(raw_name).strip().lower(), str(raw_name).strip().lower())
            if name not in BARBICAN_DEFAULTS:
                problems.append(OptionProblem(name, _show(name, raw),
                                              "not a [p11_crypto_plugin] option: oslo.config ignores it, "
                                              "so Barbican would use the default of the option you meant"))
                continue
            if raw is None:
                continue
            try:
                values[name] = _coerce(name, raw)
                explicit.add(name)
            except ValueError as exc:
                problems.append(OptionProblem(name, _show(name, raw), str(exc)))
        for name, allowed in ALLOWED_VALUES.items():
            if name in values and values[name] not in allowed:
                problems.append(OptionProblem(
                    name, values[name],
                    f"Barbican accepts only {', '.join(allowed)}: {_INVALID_VALUE_EFFECT[name]}"))
        return cls(**values, explicit=frozenset(explicit), problems=tuple(problems), source=source)

    def value(self, option: str) -> str:
        """The option's value as it would be written in barbican.conf (secrets masked)."""
        return _show(option, getattr(self, option))

    def to_mapping(self) -> dict[str, Any]:
        """The options given (not Barbican's defaults), secrets left out."""
        out = {}
        for f in fields(self):
            if f.name in ("explicit", "problems", "source") or f.name not in self.explicit:
                continue
            if f.name in SECRET_OPTIONS:
                continue
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


def _show(option: str, value: Any) -> str:
    if option in SECRET_OPTIONS and value:
        return "***"
    return conf_text(value)


def conf_text(value: Any) -> str:
    """A value as barbican.conf spells it."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


def _coerce(name: str, raw: Any) -> Any:
    if name in _BOOL_OPTIONS:
        if isinstance(raw, bool):
            return raw
        s = str(raw).strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
        raise ValueError(f"not a boolean: oslo.config refuses {raw!r} and Barbican does not start")
    if name in _INT_OPTIONS:
        if isinstance(raw, bool):
            raise ValueError("not an integer")
        try:
            v = int(str(raw).strip())
        except ValueError:
            raise ValueError(f"not an integer: oslo.config refuses {raw!r} and Barbican does not start") from None
        if name == "mkek_length" and v < 1:
            raise ValueError("mkek_length must be at least 1")
        return v
    if name in _LIST_OPTIONS:
        items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
        return tuple(str(i).strip() for i in items if str(i).strip())
    return str(raw).strip().strip("'\"")


def load_options(path: str | Path | None) -> P11Options:
    """Options from an ini file (a barbican.conf, a [p11_crypto_plugin] section, or bare
    `key = value` lines) or a YAML mapping (optionally under `p11_crypto_plugin:`).
    No path: Barbican's defaults."""
    if path is None:
        return P11Options()
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read the options file {p}: {exc.strerror or exc}") from None
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{p} is not valid YAML: {exc}") from None
        if isinstance(data, dict) and isinstance(data.get("p11_crypto_plugin"), dict):
            data = data["p11_crypto_plugin"]
        if not isinstance(data, dict):
            raise ValueError(f"{p}: expected a mapping of [p11_crypto_plugin] options")
        return P11Options.from_mapping(data, source=str(p))
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment]
    try:
        parser.read_string(text, source=str(p))
    except configparser.MissingSectionHeaderError:
        parser.read_string("[p11_crypto_plugin]\n" + text, source=str(p))
    except configparser.Error as exc:
        raise ValueError(f"{p} is not a valid ini file: {exc}") from None
    if parser.has_section("p11_crypto_plugin"):
        section = dict(parser.items("p11_crypto_plugin", raw=True))
        # values from [DEFAULT] leak into every section in configparser; keep only ours
        section = {k: v for k, v in section.items()
                   if k in parser._sections["p11_crypto_plugin"]}  # type: ignore[attr-defined]
    elif not parser.sections():
        section = dict(parser.defaults())
    else:
        raise ValueError(f"{p} has no [p11_crypto_plugin] section (sections: {', '.join(parser.sections())})")
    return P11Options.from_mapping(section, source=str(p))


FLAG_BITS = {
    "ENCRYPT": 0x100, "DECRYPT": 0x200, "SIGN": 0x800, "VERIFY": 0x2000,
    "GENERATE": 0x8000, "WRAP": 0x20000, "UNWRAP": 0x40000,
}
KNOWN_FLAG_MASK = 0x0000_0000_83FF_FF01  # CKF_HW .. CKF_EC_COMPRESS, CKF_EXTENSION


@dataclass(frozen=True)
class MechanismRequirement:
    mechanism: str
    option: str | None                # the barbican.conf option that selects it (None: hard-coded)
    flags: tuple[str, ...]            # CKF_* bits C_GetMechanismInfo must report
    key_bytes: tuple[int, ...]        # key sizes (bytes) the mechanism must accept
    purpose: str

    @property
    def code(self) -> int:
        return MECHANISMS[self.mechanism]

    @property
    def id(self) -> str:
        return f"{self.option or 'built-in'}={self.mechanism}"


def required_mechanisms(opts: P11Options) -> list[MechanismRequirement]:
    """The mechanisms Barbican's p11_crypto plugin (and barbican-manage hsm) will use."""
    reqs = [MechanismRequirement(
        "CKM_AES_KEY_GEN", None, ("GENERATE",), tuple(sorted({opts.mkek_length, opts.pkek_length})),
        "C_GenerateKey of the MKEK (barbican-manage hsm gen_mkek) and of every project KEK")]
    wanted = (
        ("encryption_mechanism", ("ENCRYPT", "DECRYPT"), (opts.pkek_length,),
         "C_Encrypt/C_Decrypt of every secret with its project KEK"),
        ("key_wrap_mechanism", ("WRAP", "UNWRAP"), (opts.mkek_length,),
         "C_WrapKey/C_UnwrapKey of project KEKs with the MKEK"),
        ("hmac_keygen_mechanism", ("GENERATE",), (HMAC_KEY_BYTES,),
         "C_GenerateKey of the HMAC key (barbican-manage hsm gen_hmac)"),
        ("hmac_mechanism", ("SIGN", "VERIFY"), (HMAC_KEY_BYTES,),
         "C_Sign/C_Verify of every wrapped project KEK"),
    )
    for option, flags, sizes, purpose in wanted:
        mech = getattr(opts, option)
        if mech in MECHANISMS and mech in ALLOWED_VALUES[option]:
            reqs.append(MechanismRequirement(mech, option, flags, sizes, purpose))
    return reqs

