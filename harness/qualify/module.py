"""Calling a PKCS#11 module the way Barbican's cffi binding does.

Barbican dlopens `library_path` and looks every C_* function up by its exported symbol
name; python-pkcs11 goes through C_GetFunctionList. Where python-pkcs11 cannot make
Barbican's call, `RawModule` calls the exported symbol through ctypes:
- C_Initialize with CKF_OS_LOCKING_OK (`os_locking_ok`); python-pkcs11 always passes NULL.
- C_GetMechanismInfo with a zeroed CK_MECHANISM_INFO. python-pkcs11 0.10.1 passes an
  uninitialised struct, and SoftHSM 2.6.1 ORs flags into it for some mechanisms
  (CKM_AES_CBC_PAD, CKM_AES_GCM ...), so python-pkcs11 reports random flags there.
- C_GetSessionInfo / C_Login on an open session (Barbican logs in only public sessions).
- CK_GCM_PARAMS with pIv=NULL (aes_gcm_generate_iv = False) or a 16-byte IV, and for the
  vendor mechanism VENDOR_SAFENET_CKM_AES_GCM (python-pkcs11 builds GCM parameters only for
  CKM_AES_GCM with a nonce of at most 12 bytes).
Also here: CKR_* names for return values and python-pkcs11 exceptions."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import pkcs11
from pkcs11 import Mechanism, _pkcs11
from pkcs11.exceptions import PKCS11Error

from harness.qualify.options import GCM_TAG_BYTES, MECHANISMS
from harness.services.softhsm import SOFTHSM_LIB_CANDIDATES

# python-pkcs11 exception class -> CKR name (pkcs11/_pkcs11.pxd map_rv_to_error).
_EXC_TO_CKR = {
    "AttributeTypeInvalid": "CKR_ATTRIBUTE_TYPE_INVALID", "AttributeValueInvalid": "CKR_ATTRIBUTE_VALUE_INVALID",
    "AttributeReadOnly": "CKR_ATTRIBUTE_READ_ONLY", "AttributeSensitive": "CKR_ATTRIBUTE_SENSITIVE",
    "ArgumentsBad": "CKR_ARGUMENTS_BAD", "DataInvalid": "CKR_DATA_INVALID", "DataLenRange": "CKR_DATA_LEN_RANGE",
    "DomainParamsInvalid": "CKR_DOMAIN_PARAMS_INVALID", "DeviceError": "CKR_DEVICE_ERROR",
    "DeviceMemory": "CKR_DEVICE_MEMORY", "DeviceRemoved": "CKR_DEVICE_REMOVED",
    "EncryptedDataInvalid": "CKR_ENCRYPTED_DATA_INVALID", "EncryptedDataLenRange": "CKR_ENCRYPTED_DATA_LEN_RANGE",
    "ExceededMaxIterations": "CKR_EXCEEDED_MAX_ITERATIONS", "FunctionCancelled": "CKR_FUNCTION_CANCELED",
    "FunctionFailed": "CKR_FUNCTION_FAILED", "FunctionRejected": "CKR_FUNCTION_REJECTED",
    "FunctionNotSupported": "CKR_FUNCTION_NOT_SUPPORTED", "KeyHandleInvalid": "CKR_KEY_HANDLE_INVALID",
    "KeyIndigestible": "CKR_KEY_INDIGESTIBLE", "KeyNeeded": "CKR_KEY_NEEDED", "KeyNotNeeded": "CKR_KEY_NOT_NEEDED",
    "KeySizeRange": "CKR_KEY_SIZE_RANGE", "KeyNotWrappable": "CKR_KEY_NOT_WRAPPABLE",
    "KeyTypeInconsistent": "CKR_KEY_TYPE_INCONSISTENT", "KeyUnextractable": "CKR_KEY_UNEXTRACTABLE",
    "GeneralError": "CKR_GENERAL_ERROR", "HostMemory": "CKR_HOST_MEMORY",
    "MechanismInvalid": "CKR_MECHANISM_INVALID", "MechanismParamInvalid": "CKR_MECHANISM_PARAM_INVALID",
    "ObjectHandleInvalid": "CKR_OBJECT_HANDLE_INVALID", "OperationActive": "CKR_OPERATION_ACTIVE",
    "OperationNotInitialized": "CKR_OPERATION_NOT_INITIALIZED", "PinExpired": "CKR_PIN_EXPIRED",
    "PinIncorrect": "CKR_PIN_INCORRECT", "PinInvalid": "CKR_PIN_INVALID", "PinLenRange": "CKR_PIN_LEN_RANGE",
    "PinLocked": "CKR_PIN_LOCKED", "PinTooWeak": "CKR_PIN_TOO_WEAK", "PublicKeyInvalid": "CKR_PUBLIC_KEY_INVALID",
    "RandomNoRNG": "CKR_RANDOM_NO_RNG", "RandomSeedNotSupported": "CKR_RANDOM_SEED_NOT_SUPPORTED",
    "SessionClosed": "CKR_SESSION_CLOSED", "SessionCount": "CKR_SESSION_COUNT",
    "SessionExists": "CKR_SESSION_EXISTS", "SessionHandleInvalid": "CKR_SESSION_HANDLE_INVALID",
    "SessionReadOnly": "CKR_SESSION_READ_ONLY", "SessionReadOnlyExists": "CKR_SESSION_READ_ONLY_EXISTS",
    "SessionReadWriteSOExists": "CKR_SESSION_READ_WRITE_SO_EXISTS", "SignatureLenRange": "CKR_SIGNATURE_LEN_RANGE",
    "SignatureInvalid": "CKR_SIGNATURE_INVALID", "TemplateIncomplete": "CKR_TEMPLATE_INCOMPLETE",
    "TemplateInconsistent": "CKR_TEMPLATE_INCONSISTENT", "SlotIDInvalid": "CKR_SLOT_ID_INVALID",
    "TokenNotPresent": "CKR_TOKEN_NOT_PRESENT", "TokenNotRecognised": "CKR_TOKEN_NOT_RECOGNIZED",
    "TokenWriteProtected": "CKR_TOKEN_WRITE_PROTECTED",
    "UnwrappingKeyHandleInvalid": "CKR_UNWRAPPING_KEY_HANDLE_INVALID",
    "UnwrappingKeySizeRange": "CKR_UNWRAPPING_KEY_SIZE_RANGE",
    "UnwrappingKeyTypeInconsistent": "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT",
    "UserNotLoggedIn": "CKR_USER_NOT_LOGGED_IN", "UserAlreadyLoggedIn": "CKR_USER_ALREADY_LOGGED_IN",
    "AnotherUserAlreadyLoggedIn": "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
    "UserPinNotInitialized": "CKR_USER_PIN_NOT_INITIALIZED", "UserTooManyTypes": "CKR_USER_TOO_MANY_TYPES",
    "WrappedKeyInvalid": "CKR_WRAPPED_KEY_INVALID", "WrappedKeyLenRange": "CKR_WRAPPED_KEY_LEN_RANGE",
    "WrappingKeyHandleInvalid": "CKR_WRAPPING_KEY_HANDLE_INVALID",
    "WrappingKeySizeRange": "CKR_WRAPPING_KEY_SIZE_RANGE",
    "WrappingKeyTypeInconsistent": "CKR_WRAPPING_KEY_TYPE_INCONSISTENT",
}
_CKR_BY_CODE = {
    0x0: "CKR_OK", 0x1: "CKR_CANCEL", 0x2: "CKR_HOST_MEMORY", 0x3: "CKR_SLOT_ID_INVALID",
    0x5: "CKR_GENERAL_ERROR", 0x6: "CKR_FUNCTION_FAILED", 0x7: "CKR_ARGUMENTS_BAD", 0x30: "CKR_DEVICE_ERROR",
    0x31: "CKR_DEVICE_MEMORY", 0x32: "CKR_DEVICE_REMOVED", 0x54: "CKR_FUNCTION_NOT_SUPPORTED",
    0x70: "CKR_MECHANISM_INVALID", 0x71: "CKR_MECHANISM_PARAM_INVALID", 0xA0: "CKR_PIN_INCORRECT",
    0xA1: "CKR_PIN_INVALID", 0xA2: "CKR_PIN_LEN_RANGE", 0xA4: "CKR_PIN_LOCKED", 0xB0: "CKR_SESSION_CLOSED",
    0xB1: "CKR_SESSION_COUNT", 0xB3: "CKR_SESSION_HANDLE_INVALID", 0xE0: "CKR_TOKEN_NOT_PRESENT",
    0xE1: "CKR_TOKEN_NOT_RECOGNIZED", 0x100: "CKR_USER_ALREADY_LOGGED_IN", 0x101: "CKR_USER_NOT_LOGGED_IN",
    0x190: "CKR_CRYPTOKI_NOT_INITIALIZED", 0x191: "CKR_CRYPTOKI_ALREADY_INITIALIZED",
}
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191
CKR_USER_ALREADY_LOGGED_IN = 0x100


def ckr_name(exc: BaseException) -> str:
    """The CKR_* name of a python-pkcs11 exception (or the exception's class name)."""
    name = type(exc).__name__
    return _EXC_TO_CKR.get(name, name if not isinstance(exc, PKCS11Error) else f"PKCS11Error({exc})")


def rv_name(rv: int) -> str:
    return _CKR_BY_CODE.get(rv, f"CKR_0x{rv:08X}")



def _vendor_mechanism(name: str, code: int) -> Mechanism:
    """A `Mechanism` for a code python-pkcs11 does not know (vendor mechanisms):
    python-pkcs11 insists on a Mechanism instance and passes its integer value on."""
    m = int.__new__(Mechanism, code)
    m._name_ = name
    m._value_ = code
    return m


def mechanism_of(name: str) -> Mechanism:
    code = MECHANISMS[name]
    try:
        return Mechanism(code)
    except ValueError:
        return _vendor_mechanism(name, code)


# --------------------------------------------------------------------------------------
# Direct calls by exported symbol (what Barbican's cffi binding does)
# --------------------------------------------------------------------------------------


class _InitArgs(ctypes.Structure):
    _fields_ = [("CreateMutex", ctypes.c_void_p), ("DestroyMutex", ctypes.c_void_p),
                ("LockMutex", ctypes.c_void_p), ("UnlockMutex", ctypes.c_void_p),
                ("flags", ctypes.c_ulong), ("pReserved", ctypes.c_void_p)]


class _MechanismInfo(ctypes.Structure):
    _fields_ = [("ulMinKeySize", ctypes.c_ulong), ("ulMaxKeySize", ctypes.c_ulong), ("flags", ctypes.c_ulong)]


class _SessionInfo(ctypes.Structure):
    _fields_ = [("slotID", ctypes.c_ulong), ("state", ctypes.c_ulong), ("flags", ctypes.c_ulong),
                ("ulDeviceError", ctypes.c_ulong)]


class _GcmParams(ctypes.Structure):
    _fields_ = [("pIv", ctypes.c_void_p), ("ulIvLen", ctypes.c_ulong), ("ulIvBits", ctypes.c_ulong),
                ("pAAD", ctypes.c_void_p), ("ulAADLen", ctypes.c_ulong), ("ulTagBits", ctypes.c_ulong)]


CKF_OS_LOCKING_OK = 0x2
CKU_USER = 1
SESSION_STATES = {0: "CKS_RO_PUBLIC_SESSION", 1: "CKS_RO_USER_FUNCTIONS", 2: "CKS_RW_PUBLIC_SESSION",
                   3: "CKS_RW_USER_FUNCTIONS", 4: "CKS_RW_SO_FUNCTIONS"}


# CK_FUNCTION_LIST, in order, up to the last entry used here (PKCS#11 v2.40, pkcs11f.h).
_FUNCTION_LIST_ORDER = (
    "C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList", "C_GetSlotList", "C_GetSlotInfo",
    "C_GetTokenInfo", "C_GetMechanismList", "C_GetMechanismInfo", "C_InitToken", "C_InitPIN", "C_SetPIN",
    "C_OpenSession", "C_CloseSession", "C_CloseAllSessions", "C_GetSessionInfo", "C_GetOperationState",
    "C_SetOperationState", "C_Login", "C_Logout",
)


class _FunctionList(ctypes.Structure):
    _fields_ = [("version", ctypes.c_ubyte * 2)] + [(n, ctypes.c_void_p) for n in _FUNCTION_LIST_ORDER]


class _TokenInfo(ctypes.Structure):
    _fields_ = [("label", ctypes.c_char * 32), ("manufacturerID", ctypes.c_char * 32),
                ("model", ctypes.c_char * 16), ("serialNumber", ctypes.c_char * 16), ("flags", ctypes.c_ulong),
                ("ulMaxSessionCount", ctypes.c_ulong), ("ulSessionCount", ctypes.c_ulong),
                ("ulMaxRwSessionCount", ctypes.c_ulong), ("ulRwSessionCount", ctypes.c_ulong),
                ("ulMaxPinLen", ctypes.c_ulong), ("ulMinPinLen", ctypes.c_ulong),
                ("ulTotalPublicMemory", ctypes.c_ulong), ("ulFreePublicMemory", ctypes.c_ulong),
                ("ulTotalPrivateMemory", ctypes.c_ulong), ("ulFreePrivateMemory", ctypes.c_ulong),
                ("hardwareVersion", ctypes.c_ubyte * 2), ("firmwareVersion", ctypes.c_ubyte * 2),
                ("utcTime", ctypes.c_char * 16)]


CKF_TOKEN_INITIALIZED = 0x400
CKF_RW_SESSION, CKF_SERIAL_SESSION = 0x2, 0x4
CKU_SO = 0


class RawModule:
    """The module's C_* functions called through ctypes: by exported symbol, as Barbican's
    cffi binding calls them, or (for a module exporting only C_GetFunctionList, which
    Barbican cannot load) through its function list, as a forwarding module would."""

    def __init__(self, path: str):
        self.path = path
        self.dll = ctypes.CDLL(path)
        self._list: _FunctionList | None = None

    def has(self, name: str) -> bool:
        """The module exports the symbol (what Barbican's ffi.dlopen needs)."""
        try:
            getattr(self.dll, name)
            return True
        except AttributeError:
            return False

    def _fn(self, name: str, *argtypes):
        proto = ctypes.CFUNCTYPE(ctypes.c_ulong, *argtypes)
        if self.has(name):
            fn = getattr(self.dll, name)
            fn.restype = ctypes.c_ulong
            fn.argtypes = list(argtypes)
            return fn
        if self._list is None:
            pointer = ctypes.POINTER(_FunctionList)()
            get_list = self.dll.C_GetFunctionList   # AttributeError: not a PKCS#11 module at all
            get_list.restype = ctypes.c_ulong
            get_list.argtypes = [ctypes.POINTER(ctypes.POINTER(_FunctionList))]
            rv = get_list(ctypes.byref(pointer))
            if rv != 0:
                raise OSError(f"C_GetFunctionList of {self.path} returned {rv_name(rv)}")
            self._list = pointer.contents
        return proto(getattr(self._list, name))

    def initialize(self, os_locking_ok: bool, reserved: bytes | None = None) -> int:
        """C_Initialize as Barbican makes it (NULL, or CKF_OS_LOCKING_OK); `reserved` is the
        pReserved string some modules want (NSS softoken), which Barbican never passes."""
        fn = self._fn("C_Initialize", ctypes.c_void_p)
        if os_locking_ok or reserved is not None:
            self._reserved = ctypes.create_string_buffer(reserved) if reserved is not None else None
            self._init_args = _InitArgs(None, None, None, None, CKF_OS_LOCKING_OK if os_locking_ok else 0,
                                        ctypes.addressof(self._reserved) if self._reserved is not None else None)
            return fn(ctypes.addressof(self._init_args))
        return fn(None)

    def finalize(self) -> int:
        return self._fn("C_Finalize", ctypes.c_void_p)(None)

    def slots(self, token_present: bool = True) -> tuple[int, list[int]]:
        fn = self._fn("C_GetSlotList", ctypes.c_ubyte, ctypes.POINTER(ctypes.c_ulong), ctypes.POINTER(ctypes.c_ulong))
        count = ctypes.c_ulong(0)
        rv = fn(int(token_present), None, ctypes.byref(count))
        if rv != 0:
            return rv, []
        ids = (ctypes.c_ulong * max(count.value, 1))()
        rv = fn(int(token_present), ids, ctypes.byref(count))
        return rv, list(ids[:count.value])

    def token_info(self, slot_id: int) -> tuple[int, dict[str, Any]]:
        info = _TokenInfo()
        rv = self._fn("C_GetTokenInfo", ctypes.c_ulong, ctypes.POINTER(_TokenInfo))(slot_id, ctypes.byref(info))

        def text(raw: bytes) -> str:
            return raw.decode(errors="replace").strip()

        return rv, {"label": text(info.label), "manufacturer": text(info.manufacturerID), "model": text(info.model),
                    "serial": text(info.serialNumber), "flags": info.flags, "min_pin": info.ulMinPinLen,
                    "max_pin": info.ulMaxPinLen,
                    "firmware": f"{info.firmwareVersion[0]}.{info.firmwareVersion[1]}",
                    "initialized": bool(info.flags & CKF_TOKEN_INITIALIZED)}

    def init_token(self, slot_id: int, so_pin: str, label: str) -> int:
        pin, padded = so_pin.encode(), label.encode()[:32].ljust(32, b" ")
        return self._fn("C_InitToken", ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)(
            slot_id, pin, len(pin), padded)

    def open_session(self, slot_id: int) -> tuple[int, int]:
        handle = ctypes.c_ulong(0)
        rv = self._fn("C_OpenSession", ctypes.c_ulong, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_void_p,
                      ctypes.POINTER(ctypes.c_ulong))(slot_id, CKF_RW_SESSION | CKF_SERIAL_SESSION, None, None,
                                                      ctypes.byref(handle))
        return rv, handle.value

    def close_session(self, handle: int) -> int:
        return self._fn("C_CloseSession", ctypes.c_ulong)(handle)

    def session_state(self, handle: int) -> tuple[int, int]:
        info = _SessionInfo(0, 0, 0, 0)
        rv = self._fn("C_GetSessionInfo", ctypes.c_ulong, ctypes.POINTER(_SessionInfo))(handle, ctypes.byref(info))
        return rv, info.state

    def login(self, handle: int, pin: str, user: int = CKU_USER) -> int:
        data = pin.encode()
        return self._fn("C_Login", ctypes.c_ulong, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong)(
            handle, user, data, len(data))

    def logout(self, handle: int) -> int:
        return self._fn("C_Logout", ctypes.c_ulong)(handle)

    def set_pin(self, handle: int, old: str, new: str) -> int:
        a, b = old.encode(), new.encode()
        return self._fn("C_SetPIN", ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p,
                        ctypes.c_ulong)(handle, a, len(a), b, len(b))

    def init_pin(self, handle: int, pin: str) -> int:
        data = pin.encode()
        return self._fn("C_InitPIN", ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong)(handle, data, len(data))

    def mechanism_info(self, slot_id: int, code: int) -> tuple[int, tuple[int, int, int]]:
        info = _MechanismInfo(0, 0, 0)
        rv = self._fn("C_GetMechanismInfo", ctypes.c_ulong, ctypes.c_ulong, ctypes.POINTER(_MechanismInfo))(
            slot_id, code, ctypes.byref(info))
        return rv, (info.ulMinKeySize, info.ulMaxKeySize, info.flags)


def gcm_params_raw(iv: bytes | None) -> tuple[bytes, Any]:
    """CK_GCM_PARAMS as Barbican builds it (_build_gcm_mechanism): pIv NULL when the HSM makes
    the IV, ulTagBits 128. Returns the struct bytes and the buffer they point to (keep it alive)."""
    buf = ctypes.create_string_buffer(iv, len(iv)) if iv else None
    params = _GcmParams(ctypes.addressof(buf) if buf is not None else None, len(iv or b""),
                        8 * len(iv or b""), None, 0, GCM_TAG_BYTES * 8)
    return bytes(params), buf


def load_library(path: str, os_locking_ok: bool) -> tuple[Any, RawModule | None]:
    """python-pkcs11's lib, with C_Initialize made the way Barbican makes it: NULL args, or
    CKF_OS_LOCKING_OK when os_locking_ok = True. Load only after SOFTHSM2_CONF is set."""
    try:
        raw: RawModule | None = RawModule(path)
    except OSError:
        raw = None
    if raw is None or not (raw.has("C_Initialize") or raw.has("C_GetFunctionList")):
        return pkcs11.lib(path), raw

    class _BarbicanInitialisedLib(_pkcs11.lib):
        def initialize(self):  # called from lib.__init__
            rv = raw.initialize(os_locking_ok)
            if rv not in (0, CKR_CRYPTOKI_ALREADY_INITIALIZED):
                raise PKCS11Error(f"C_Initialize returned {rv_name(rv)}")

    return _BarbicanInitialisedLib(path), raw


def default_module() -> str | None:
    """SoftHSM's library when installed."""
    for c in SOFTHSM_LIB_CANDIDATES:
        if Path(c).is_file():
            return c
    return None


def is_softhsm(module: str) -> bool:
    return "softhsm" in Path(module).name.lower()

