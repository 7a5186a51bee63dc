/*
 * p11shim: a fault-injecting PKCS#11 pass-through module.
 *
 * The shim is itself a PKCS#11 module.  It dlopen()s the real module named by
 * $P11SHIM_MODULE (SoftHSM, a vendor library, ...) and forwards every call to
 * it.  Rules read from the control file $P11SHIM_CONTROL can delay a call
 * and/or make it return a chosen CK_RV without reaching the real module.
 * Per-function call counts, error counts and time spent in the real module
 * are written to $P11SHIM_STATS_DIR/<pid>.stats.  With $P11SHIM_STORE_LOCK,
 * calls that read or write the token store are serialised across processes
 * (see "Token-store lock").
 *
 * Why every C_* symbol is exported: Barbican's p11 plugin dlopen()s
 * `library_path` with cffi and calls C_Initialize, C_Login, ... by symbol name;
 * it never calls C_GetFunctionList.  Other consumers (python-pkcs11,
 * pkcs11-tool) go through C_GetFunctionList / C_GetInterface instead.  So the
 * shim exports all 68 PKCS#11 2.40 functions by name, and hands out a
 * function list whose slots point at the very same wrappers.
 *
 * The PKCS#11 declarations below are written here (not copied from any
 * header) and cover only what a pass-through needs: structures the shim never
 * looks into are declared as incomplete types and only passed by pointer.
 * The ABI is the usual Unix one: CK_ULONG is `unsigned long`, default
 * alignment, no packing.
 *
 * Control file (re-read when its identity/mtime/size changes, checked at most
 * every 50 ms on a call): one rule per line, whitespace separated key=value,
 * `#` starts a comment.
 *     fn=C_Decrypt delay_ms=500 jitter_ms=100
 *     fn=C_Login rv=CKR_PIN_LOCKED after=3 count=2
 *     fn=* rv=0xE0 probability=0.1 seed=42
 * The rule for a call is the first line naming that function, else the first
 * `fn=*` line.  Counters (after/count) and the random stream live in this
 * process only, and start afresh whenever the file is re-read and in a child
 * after fork().  See harness/shim/__init__.py for the full description.
 * A failure injected into C_Encrypt, C_Sign, C_*Final ... also ends the
 * operation inside the real module, as the standard requires (see "Ending
 * operations" below).
 *
 * Only this file is needed to build: cc -shared -fPIC -O2 p11shim.c -ldl -lpthread
 * It must not depend on libpython: it is loaded by programs with no Python.
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* ------------------------------------------------------------------------ */
/* Settings: the environment, or a file next to the shim                      */
/* ------------------------------------------------------------------------ */

/*
 * The P11SHIM_* settings come from the environment.  When P11SHIM_MODULE is
 * not set there, they come from KEY=VALUE lines of a file instead: the one
 * named by $P11SHIM_CONFIG, by default the shim's own path + ".conf".  A
 * process whose environment cannot be changed (Barbican in a container that
 * is already running) finds its settings next to the shim that way.
 */
#define SETTINGS_MAX 8
static char settings_key[SETTINGS_MAX][32];
static char settings_value[SETTINGS_MAX][PATH_MAX];
static int settings_count;
static pthread_once_t settings_once = PTHREAD_ONCE_INIT;

static void settings_read(void)
{
    char path[PATH_MAX], line[PATH_MAX + 64];
    const char *named = getenv("P11SHIM_CONFIG");
    Dl_info self;
    if (named && *named) {
        if (snprintf(path, sizeof(path), "%s", named) >= (int)sizeof(path))
            return;
    } else if (!dladdr((void *)settings_read, &self) || !self.dli_fname ||
               snprintf(path, sizeof(path), "%s.conf", self.dli_fname) >= (int)sizeof(path)) {
        return;
    }
    FILE *f = fopen(path, "re");
    if (!f)
        return;
    while (settings_count < SETTINGS_MAX && fgets(line, sizeof(line), f)) {
        char *eq = strchr(line, '=');
        if (strncmp(line, "P11SHIM_", 8) != 0 || !eq || eq - line >= 32)
            continue;
        *eq = '\0';
        eq[1 + strcspn(eq + 1, "\r\n")] = '\0';
        strcpy(settings_key[settings_count], line);
        strcpy(settings_value[settings_count], eq + 1);
        settings_count++;
    }
    fclose(f);
}

static const char *setting(const char *name)
{
    const char *module = getenv("P11SHIM_MODULE");
    if (module && *module)
        return getenv(name);
    pthread_once(&settings_once, settings_read);
    for (int i = 0; i < settings_count; i++)
        if (strcmp(settings_key[i], name) == 0)
            return settings_value[i];
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Minimal PKCS#11 2.40 / 3.0 declarations                                   */
/* ------------------------------------------------------------------------ */

typedef unsigned char CK_BYTE;
typedef unsigned char CK_UTF8CHAR;
typedef unsigned char CK_BBOOL;
typedef unsigned long CK_ULONG;
typedef CK_ULONG CK_FLAGS;
typedef CK_ULONG CK_RV;
typedef CK_ULONG CK_SLOT_ID;
typedef CK_ULONG CK_SESSION_HANDLE;
typedef CK_ULONG CK_OBJECT_HANDLE;
typedef CK_ULONG CK_MECHANISM_TYPE;
typedef CK_ULONG CK_USER_TYPE;
typedef CK_ULONG CK_NOTIFICATION;
typedef void *CK_VOID_PTR;
typedef CK_BYTE *CK_BYTE_PTR;
typedef CK_UTF8CHAR *CK_UTF8CHAR_PTR;
typedef CK_ULONG *CK_ULONG_PTR;
typedef CK_SLOT_ID *CK_SLOT_ID_PTR;
typedef CK_SESSION_HANDLE *CK_SESSION_HANDLE_PTR;
typedef CK_OBJECT_HANDLE *CK_OBJECT_HANDLE_PTR;
typedef CK_MECHANISM_TYPE *CK_MECHANISM_TYPE_PTR;

/* Opaque to the shim: only ever passed through by pointer. */
typedef struct CK_INFO CK_INFO;
typedef struct CK_SLOT_INFO CK_SLOT_INFO;
typedef struct CK_TOKEN_INFO CK_TOKEN_INFO;
typedef struct CK_SESSION_INFO CK_SESSION_INFO;
typedef struct CK_MECHANISM CK_MECHANISM;
typedef struct CK_MECHANISM_INFO CK_MECHANISM_INFO;
typedef struct CK_ATTRIBUTE CK_ATTRIBUTE;
typedef CK_INFO *CK_INFO_PTR;
typedef CK_SLOT_INFO *CK_SLOT_INFO_PTR;
typedef CK_TOKEN_INFO *CK_TOKEN_INFO_PTR;
typedef CK_SESSION_INFO *CK_SESSION_INFO_PTR;
typedef CK_MECHANISM *CK_MECHANISM_PTR;
typedef CK_MECHANISM_INFO *CK_MECHANISM_INFO_PTR;
typedef CK_ATTRIBUTE *CK_ATTRIBUTE_PTR;

typedef CK_RV (*CK_NOTIFY)(CK_SESSION_HANDLE, CK_NOTIFICATION, CK_VOID_PTR);

typedef struct CK_VERSION {
    CK_BYTE major;
    CK_BYTE minor;
} CK_VERSION;
typedef CK_VERSION *CK_VERSION_PTR;

/* Only `flags` is read (for CKF_LIBRARY_CANT_CREATE_OS_THREADS). */
typedef struct CK_C_INITIALIZE_ARGS {
    void *CreateMutex, *DestroyMutex, *LockMutex, *UnlockMutex;
    CK_FLAGS flags;
    CK_VOID_PTR pReserved;
} CK_C_INITIALIZE_ARGS;
#define CKF_LIBRARY_CANT_CREATE_OS_THREADS 0x00000001UL

typedef struct CK_FUNCTION_LIST CK_FUNCTION_LIST;
typedef CK_FUNCTION_LIST *CK_FUNCTION_LIST_PTR;
typedef CK_FUNCTION_LIST_PTR *CK_FUNCTION_LIST_PTR_PTR;

typedef struct CK_INTERFACE {
    CK_UTF8CHAR *pInterfaceName;
    CK_VOID_PTR pFunctionList;
    CK_FLAGS flags;
} CK_INTERFACE;
typedef CK_INTERFACE *CK_INTERFACE_PTR;
typedef CK_INTERFACE_PTR *CK_INTERFACE_PTR_PTR;

#define CKR_OK                  0x000UL
#define CKR_GENERAL_ERROR       0x005UL
#define CKR_ARGUMENTS_BAD       0x007UL
#define CKR_BUFFER_TOO_SMALL    0x150UL

/*
 * The 68 PKCS#11 2.40 functions, in CK_FUNCTION_LIST order (the order is ABI).
 * P11_FUNCS(W, D, H, S): W = generated wrapper, D = generated wrapper that
 * also ends the real module's operation when a rule fails the call (see
 * "Ending operations"), H = hand-written wrapper (C_Initialize, C_Finalize),
 * S = served by the shim itself (C_GetFunctionList).
 * Each entry: name, parameter list, argument list for forwarding.
 */
#define P11_FUNCS(W, D, H, S) \
  H(C_Initialize, (CK_VOID_PTR pInitArgs), (pInitArgs)) \
  H(C_Finalize, (CK_VOID_PTR pReserved), (pReserved)) \
  W(C_GetInfo, (CK_INFO_PTR pInfo), (pInfo)) \
  S(C_GetFunctionList, (CK_FUNCTION_LIST_PTR_PTR ppFunctionList), (ppFunctionList)) \
  W(C_GetSlotList, (CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount), \
    (tokenPresent, pSlotList, pulCount)) \
  W(C_GetSlotInfo, (CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo), (slotID, pInfo)) \
  W(C_GetTokenInfo, (CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo), (slotID, pInfo)) \
  W(C_GetMechanismList, (CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pMechanismList, CK_ULONG_PTR pulCount), \
    (slotID, pMechanismList, pulCount)) \
  W(C_GetMechanismInfo, (CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo), \
    (slotID, type, pInfo)) \
  W(C_InitToken, (CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pLabel), \
    (slotID, pPin, ulPinLen, pLabel)) \
  W(C_InitPIN, (CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen), \
    (hSession, pPin, ulPinLen)) \
  W(C_SetPIN, (CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pOldPin, CK_ULONG ulOldLen, \
               CK_UTF8CHAR_PTR pNewPin, CK_ULONG ulNewLen), \
    (hSession, pOldPin, ulOldLen, pNewPin, ulNewLen)) \
  W(C_OpenSession, (CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication, CK_NOTIFY Notify, \
                    CK_SESSION_HANDLE_PTR phSession), \
    (slotID, flags, pApplication, Notify, phSession)) \
  W(C_CloseSession, (CK_SESSION_HANDLE hSession), (hSession)) \
  W(C_CloseAllSessions, (CK_SLOT_ID slotID), (slotID)) \
  W(C_GetSessionInfo, (CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo), (hSession, pInfo)) \
  W(C_GetOperationState, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState, \
                          CK_ULONG_PTR pulOperationStateLen), \
    (hSession, pOperationState, pulOperationStateLen)) \
  W(C_SetOperationState, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState, \
                          CK_ULONG ulOperationStateLen, CK_OBJECT_HANDLE hEncryptionKey, \
                          CK_OBJECT_HANDLE hAuthenticationKey), \
    (hSession, pOperationState, ulOperationStateLen, hEncryptionKey, hAuthenticationKey)) \
  W(C_Login, (CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen), \
    (hSession, userType, pPin, ulPinLen)) \
  W(C_Logout, (CK_SESSION_HANDLE hSession), (hSession)) \
  W(C_CreateObject, (CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount, \
                     CK_OBJECT_HANDLE_PTR phObject), \
    (hSession, pTemplate, ulCount, phObject)) \
  W(C_CopyObject, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, \
                   CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phNewObject), \
    (hSession, hObject, pTemplate, ulCount, phNewObject)) \
  W(C_DestroyObject, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject), (hSession, hObject)) \
  W(C_GetObjectSize, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ULONG_PTR pulSize), \
    (hSession, hObject, pulSize)) \
  W(C_GetAttributeValue, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, \
                          CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount), \
    (hSession, hObject, pTemplate, ulCount)) \
  W(C_SetAttributeValue, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, \
                          CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount), \
    (hSession, hObject, pTemplate, ulCount)) \
  W(C_FindObjectsInit, (CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount), \
    (hSession, pTemplate, ulCount)) \
  W(C_FindObjects, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject, \
                    CK_ULONG ulMaxObjectCount, CK_ULONG_PTR pulObjectCount), \
    (hSession, phObject, ulMaxObjectCount, pulObjectCount)) \
  W(C_FindObjectsFinal, (CK_SESSION_HANDLE hSession), (hSession)) \
  W(C_EncryptInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey), \
    (hSession, pMechanism, hKey)) \
  D(C_Encrypt, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, \
                CK_BYTE_PTR pEncryptedData, CK_ULONG_PTR pulEncryptedDataLen), \
    (hSession, pData, ulDataLen, pEncryptedData, pulEncryptedDataLen)) \
  D(C_EncryptUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, \
                      CK_BYTE_PTR pEncryptedPart, CK_ULONG_PTR pulEncryptedPartLen), \
    (hSession, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen)) \
  D(C_EncryptFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pLastEncryptedPart, \
                     CK_ULONG_PTR pulLastEncryptedPartLen), \
    (hSession, pLastEncryptedPart, pulLastEncryptedPartLen)) \
  W(C_DecryptInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey), \
    (hSession, pMechanism, hKey)) \
  D(C_Decrypt, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedData, CK_ULONG ulEncryptedDataLen, \
                CK_BYTE_PTR pData, CK_ULONG_PTR pulDataLen), \
    (hSession, pEncryptedData, ulEncryptedDataLen, pData, pulDataLen)) \
  D(C_DecryptUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen, \
                      CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen), \
    (hSession, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen)) \
  D(C_DecryptFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pLastPart, CK_ULONG_PTR pulLastPartLen), \
    (hSession, pLastPart, pulLastPartLen)) \
  W(C_DigestInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism), (hSession, pMechanism)) \
  D(C_Digest, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, \
               CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen), \
    (hSession, pData, ulDataLen, pDigest, pulDigestLen)) \
  D(C_DigestUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen), \
    (hSession, pPart, ulPartLen)) \
  D(C_DigestKey, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hKey), (hSession, hKey)) \
  D(C_DigestFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen), \
    (hSession, pDigest, pulDigestLen)) \
  W(C_SignInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey), \
    (hSession, pMechanism, hKey)) \
  D(C_Sign, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, \
             CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen), \
    (hSession, pData, ulDataLen, pSignature, pulSignatureLen)) \
  D(C_SignUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen), \
    (hSession, pPart, ulPartLen)) \
  D(C_SignFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen), \
    (hSession, pSignature, pulSignatureLen)) \
  W(C_SignRecoverInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey), \
    (hSession, pMechanism, hKey)) \
  D(C_SignRecover, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, \
                    CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen), \
    (hSession, pData, ulDataLen, pSignature, pulSignatureLen)) \
  W(C_VerifyInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey), \
    (hSession, pMechanism, hKey)) \
  D(C_Verify, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, \
               CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen), \
    (hSession, pData, ulDataLen, pSignature, ulSignatureLen)) \
  D(C_VerifyUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen), \
    (hSession, pPart, ulPartLen)) \
  D(C_VerifyFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen), \
    (hSession, pSignature, ulSignatureLen)) \
  W(C_VerifyRecoverInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey), \
    (hSession, pMechanism, hKey)) \
  D(C_VerifyRecover, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen, \
                      CK_BYTE_PTR pData, CK_ULONG_PTR pulDataLen), \
    (hSession, pSignature, ulSignatureLen, pData, pulDataLen)) \
  W(C_DigestEncryptUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, \
                            CK_BYTE_PTR pEncryptedPart, CK_ULONG_PTR pulEncryptedPartLen), \
    (hSession, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen)) \
  W(C_DecryptDigestUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart, \
                            CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen), \
    (hSession, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen)) \
  W(C_SignEncryptUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, \
                          CK_BYTE_PTR pEncryptedPart, CK_ULONG_PTR pulEncryptedPartLen), \
    (hSession, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen)) \
  W(C_DecryptVerifyUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart, \
                            CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen), \
    (hSession, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen)) \
  W(C_GenerateKey, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pTemplate, \
                    CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phKey), \
    (hSession, pMechanism, pTemplate, ulCount, phKey)) \
  W(C_GenerateKeyPair, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, \
                        CK_ATTRIBUTE_PTR pPublicKeyTemplate, CK_ULONG ulPublicKeyAttributeCount, \
                        CK_ATTRIBUTE_PTR pPrivateKeyTemplate, CK_ULONG ulPrivateKeyAttributeCount, \
                        CK_OBJECT_HANDLE_PTR phPublicKey, CK_OBJECT_HANDLE_PTR phPrivateKey), \
    (hSession, pMechanism, pPublicKeyTemplate, ulPublicKeyAttributeCount, pPrivateKeyTemplate, \
     ulPrivateKeyAttributeCount, phPublicKey, phPrivateKey)) \
  W(C_WrapKey, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hWrappingKey, \
                CK_OBJECT_HANDLE hKey, CK_BYTE_PTR pWrappedKey, CK_ULONG_PTR pulWrappedKeyLen), \
    (hSession, pMechanism, hWrappingKey, hKey, pWrappedKey, pulWrappedKeyLen)) \
  W(C_UnwrapKey, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hUnwrappingKey, \
                  CK_BYTE_PTR pWrappedKey, CK_ULONG ulWrappedKeyLen, CK_ATTRIBUTE_PTR pTemplate, \
                  CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey), \
    (hSession, pMechanism, hUnwrappingKey, pWrappedKey, ulWrappedKeyLen, pTemplate, ulAttributeCount, phKey)) \
  W(C_DeriveKey, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hBaseKey, \
                  CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey), \
    (hSession, pMechanism, hBaseKey, pTemplate, ulAttributeCount, phKey)) \
  W(C_SeedRandom, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSeed, CK_ULONG ulSeedLen), \
    (hSession, pSeed, ulSeedLen)) \
  W(C_GenerateRandom, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR RandomData, CK_ULONG ulRandomLen), \
    (hSession, RandomData, ulRandomLen)) \
  W(C_GetFunctionStatus, (CK_SESSION_HANDLE hSession), (hSession)) \
  W(C_CancelFunction, (CK_SESSION_HANDLE hSession), (hSession)) \
  W(C_WaitForSlotEvent, (CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pReserved), \
    (flags, pSlot, pReserved))

#define P11_NOTHING(name, params, args)

/* Function indices, used for rules and statistics. */
#define P11_ENUM(name, params, args) IDX_##name,
enum { P11_FUNCS(P11_ENUM, P11_ENUM, P11_ENUM, P11_ENUM) NFUNCS };

#define P11_NAME(name, params, args) #name,
static const char *const fn_names[NFUNCS] = { P11_FUNCS(P11_NAME, P11_NAME, P11_NAME, P11_NAME) };

/*
 * Token-store lock.  SoftHSM 2.6.1's file object store is not safe across
 * processes: every C_Login rewrites token.object, and a C_Initialize (or
 * C_GetSlotList / C_GetTokenInfo) in another process at that moment does not
 * see the token at all (Barbican: "Token Labels not found"; measured here with
 * two processes logging in: 5122 of 11544 initialisations missed the token;
 * 0 with this lock).  A network HSM serialises on its side; for a module that
 * keeps its store in shared files, $P11SHIM_STORE_LOCK names a lock file and
 * the calls below hold an exclusive flock() on it while the real module runs
 * them.  flock() does not exclude threads sharing one open file, hence the
 * process-wide mutex around it.  Crypto calls on session objects (encrypt,
 * decrypt, wrap, sign, random ...) are not serialised.  Unset = no lock: a
 * vendor's module is measured as it is.
 */
static const unsigned char store_fn[NFUNCS] = {
    [IDX_C_Initialize] = 1, [IDX_C_Finalize] = 1, [IDX_C_GetSlotList] = 1,
    [IDX_C_GetSlotInfo] = 1, [IDX_C_GetTokenInfo] = 1, [IDX_C_InitToken] = 1,
    [IDX_C_InitPIN] = 1, [IDX_C_SetPIN] = 1, [IDX_C_OpenSession] = 1,
    [IDX_C_CloseSession] = 1, [IDX_C_CloseAllSessions] = 1, [IDX_C_Login] = 1,
    [IDX_C_Logout] = 1, [IDX_C_CreateObject] = 1, [IDX_C_CopyObject] = 1,
    [IDX_C_DestroyObject] = 1, [IDX_C_GetAttributeValue] = 1, [IDX_C_SetAttributeValue] = 1,
    [IDX_C_FindObjectsInit] = 1, [IDX_C_GenerateKey] = 1, [IDX_C_GenerateKeyPair] = 1,
    [IDX_C_UnwrapKey] = 1, [IDX_C_DeriveKey] = 1,
};
#define STORE_LOCK_WAIT_NS (5ULL * 1000000000ULL)
static uint64_t mono_ns(void);
static void sleep_ns(uint64_t ns);
static pthread_mutex_t store_mu = PTHREAD_MUTEX_INITIALIZER;
static int store_fd = -1;          /* opened on first use, in this process */
static int store_unavailable;      /* the variable is unset, or the file cannot be opened */
/* After a timed-out wait, calls go without the lock until this time (monotonic ns):
   with a holder stopped, N threads would otherwise each wait the full bound in turn. */
static uint64_t store_skip_until;

static void store_timed_out(int fn, const char *what)
{
    __atomic_store_n(&store_skip_until, mono_ns() + STORE_LOCK_WAIT_NS, __ATOMIC_RELAXED);
    fprintf(stderr, "p11shim: token-store %s still held after %d s; calling %s and the store "
            "calls of the next %d s without it\n", what, (int)(STORE_LOCK_WAIT_NS / 1000000000ULL),
            fn_names[fn], (int)(STORE_LOCK_WAIT_NS / 1000000000ULL));
}

/* 1 when the lock is now held (release with store_leave), 0 when not needed. */
static int store_enter(int fn)
{
    if (!store_fn[fn] || __atomic_load_n(&store_unavailable, __ATOMIC_RELAXED))
        return 0;
    if (mono_ns() < __atomic_load_n(&store_skip_until, __ATOMIC_RELAXED))
        return 0;
    /* One bound for the whole wait, the in-process mutex included: a thread of this
       process may hold the mutex while it waits for the flock of a stopped process (the
       node_pause fault sends SIGSTOP), and every thread behind it must not queue on the
       mutex for its turn at the full flock wait. */
    uint64_t deadline = mono_ns() + STORE_LOCK_WAIT_NS;
    struct timespec abs;
    clock_gettime(CLOCK_REALTIME, &abs);   /* pthread_mutex_timedlock takes CLOCK_REALTIME */
    abs.tv_sec += (time_t)(STORE_LOCK_WAIT_NS / 1000000000ULL);
    int rc = pthread_mutex_timedlock(&store_mu, &abs);
    if (rc != 0) {
        if (rc == ETIMEDOUT)
            store_timed_out(fn, "mutex");
        return 0;
    }
    /* Another thread timed out while this one waited for the mutex. */
    if (mono_ns() < __atomic_load_n(&store_skip_until, __ATOMIC_RELAXED)) {
        pthread_mutex_unlock(&store_mu);
        return 0;
    }
    if (store_fd < 0) {
        const char *path = setting("P11SHIM_STORE_LOCK");
        if (path && *path)
            store_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (store_fd < 0) {
            if (path && *path)
                fprintf(stderr, "p11shim: cannot open P11SHIM_STORE_LOCK=%s: %s; token-store calls "
                        "are not serialised\n", path, strerror(errno));
            __atomic_store_n(&store_unavailable, 1, __ATOMIC_RELAXED);
            pthread_mutex_unlock(&store_mu);
            return 0;
        }
    }
    /* Bounded wait: a process stopped while holding the lock must not freeze every
       other process on the token. */
    uint64_t pause_ns = 50000;
    while (flock(store_fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno != EWOULDBLOCK && errno != EINTR)
            break;
        if (mono_ns() >= deadline) {
            store_timed_out(fn, "lock");
            pthread_mutex_unlock(&store_mu);
            return 0;
        }
        sleep_ns(pause_ns);
        if (pause_ns < 500000)
            pause_ns *= 2;
    }
    return 1;
}

static void store_leave(int held)
{
    if (!held)
        return;
    flock(store_fd, LOCK_UN);
    pthread_mutex_unlock(&store_mu);
}

struct CK_FUNCTION_LIST {
    CK_VERSION version;
#define P11_FIELD(name, params, args) CK_RV (*name) params;
    P11_FUNCS(P11_FIELD, P11_FIELD, P11_FIELD, P11_FIELD)
};

/* The exported functions (they are also what our function list points at). */
#define P11_DECL(name, params, args) EXPORT CK_RV name params;
P11_FUNCS(P11_DECL, P11_DECL, P11_DECL, P11_DECL)
EXPORT CK_RV C_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount);
EXPORT CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
                            CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags);
EXPORT int p11shim_rv_from_name(const char *name, unsigned long *out);
EXPORT const char *p11shim_rv_name(unsigned long rv);

#define P11_INIT(name, params, args) name,
static CK_FUNCTION_LIST shim_list = { {2, 40}, P11_FUNCS(P11_INIT, P11_INIT, P11_INIT, P11_INIT) };

static CK_INTERFACE shim_interface = { (CK_UTF8CHAR *)"PKCS 11", &shim_list, 0 };

typedef CK_RV (*get_function_list_fn)(CK_FUNCTION_LIST_PTR_PTR);
typedef CK_RV (*get_interface_fn)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS);

/* ------------------------------------------------------------------------ */
/* CK_RV names                                                               */
/* ------------------------------------------------------------------------ */

struct rv_name { const char *name; unsigned long value; };

/* Standard return values of PKCS#11 2.40 and 3.0 (3.1: CKR_KEY_EXHAUSTED). */
static const struct rv_name rv_names[] = {
    {"CKR_OK", 0x0}, {"CKR_CANCEL", 0x1}, {"CKR_HOST_MEMORY", 0x2},
    {"CKR_SLOT_ID_INVALID", 0x3}, {"CKR_GENERAL_ERROR", 0x5}, {"CKR_FUNCTION_FAILED", 0x6},
    {"CKR_ARGUMENTS_BAD", 0x7}, {"CKR_NO_EVENT", 0x8}, {"CKR_NEED_TO_CREATE_THREADS", 0x9},
    {"CKR_CANT_LOCK", 0xa}, {"CKR_ATTRIBUTE_READ_ONLY", 0x10}, {"CKR_ATTRIBUTE_SENSITIVE", 0x11},
    {"CKR_ATTRIBUTE_TYPE_INVALID", 0x12}, {"CKR_ATTRIBUTE_VALUE_INVALID", 0x13},
    {"CKR_ACTION_PROHIBITED", 0x1b}, {"CKR_DATA_INVALID", 0x20}, {"CKR_DATA_LEN_RANGE", 0x21},
    {"CKR_DEVICE_ERROR", 0x30}, {"CKR_DEVICE_MEMORY", 0x31}, {"CKR_DEVICE_REMOVED", 0x32},
    {"CKR_AEAD_DECRYPT_FAILED", 0x35},
    {"CKR_ENCRYPTED_DATA_INVALID", 0x40}, {"CKR_ENCRYPTED_DATA_LEN_RANGE", 0x41},
    {"CKR_FUNCTION_CANCELED", 0x50}, {"CKR_FUNCTION_NOT_PARALLEL", 0x51},
    {"CKR_FUNCTION_NOT_SUPPORTED", 0x54}, {"CKR_KEY_HANDLE_INVALID", 0x60},
    {"CKR_KEY_SIZE_RANGE", 0x62}, {"CKR_KEY_TYPE_INCONSISTENT", 0x63},
    {"CKR_KEY_NOT_NEEDED", 0x64}, {"CKR_KEY_CHANGED", 0x65}, {"CKR_KEY_NEEDED", 0x66},
    {"CKR_KEY_INDIGESTIBLE", 0x67}, {"CKR_KEY_FUNCTION_NOT_PERMITTED", 0x68},
    {"CKR_KEY_NOT_WRAPPABLE", 0x69}, {"CKR_KEY_UNEXTRACTABLE", 0x6a},
    {"CKR_MECHANISM_INVALID", 0x70}, {"CKR_MECHANISM_PARAM_INVALID", 0x71},
    {"CKR_OBJECT_HANDLE_INVALID", 0x82}, {"CKR_OPERATION_ACTIVE", 0x90},
    {"CKR_OPERATION_NOT_INITIALIZED", 0x91}, {"CKR_PIN_INCORRECT", 0xa0},
    {"CKR_PIN_INVALID", 0xa1}, {"CKR_PIN_LEN_RANGE", 0xa2}, {"CKR_PIN_EXPIRED", 0xa3},
    {"CKR_PIN_LOCKED", 0xa4}, {"CKR_SESSION_CLOSED", 0xb0}, {"CKR_SESSION_COUNT", 0xb1},
    {"CKR_SESSION_HANDLE_INVALID", 0xb3}, {"CKR_SESSION_PARALLEL_NOT_SUPPORTED", 0xb4},
    {"CKR_SESSION_READ_ONLY", 0xb5}, {"CKR_SESSION_EXISTS", 0xb6},
    {"CKR_SESSION_READ_ONLY_EXISTS", 0xb7}, {"CKR_SESSION_READ_WRITE_SO_EXISTS", 0xb8},
    {"CKR_SIGNATURE_INVALID", 0xc0}, {"CKR_SIGNATURE_LEN_RANGE", 0xc1},
    {"CKR_TEMPLATE_INCOMPLETE", 0xd0}, {"CKR_TEMPLATE_INCONSISTENT", 0xd1},
    {"CKR_TOKEN_NOT_PRESENT", 0xe0}, {"CKR_TOKEN_NOT_RECOGNIZED", 0xe1},
    {"CKR_TOKEN_WRITE_PROTECTED", 0xe2}, {"CKR_UNWRAPPING_KEY_HANDLE_INVALID", 0xf0},
    {"CKR_UNWRAPPING_KEY_SIZE_RANGE", 0xf1}, {"CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT", 0xf2},
    {"CKR_USER_ALREADY_LOGGED_IN", 0x100}, {"CKR_USER_NOT_LOGGED_IN", 0x101},
    {"CKR_USER_PIN_NOT_INITIALIZED", 0x102}, {"CKR_USER_TYPE_INVALID", 0x103},
    {"CKR_USER_ANOTHER_ALREADY_LOGGED_IN", 0x104}, {"CKR_USER_TOO_MANY_TYPES", 0x105},
    {"CKR_WRAPPED_KEY_INVALID", 0x110}, {"CKR_WRAPPED_KEY_LEN_RANGE", 0x112},
    {"CKR_WRAPPING_KEY_HANDLE_INVALID", 0x113}, {"CKR_WRAPPING_KEY_SIZE_RANGE", 0x114},
    {"CKR_WRAPPING_KEY_TYPE_INCONSISTENT", 0x115}, {"CKR_RANDOM_SEED_NOT_SUPPORTED", 0x120},
    {"CKR_RANDOM_NO_RNG", 0x121}, {"CKR_DOMAIN_PARAMS_INVALID", 0x130},
    {"CKR_CURVE_NOT_SUPPORTED", 0x140}, {"CKR_BUFFER_TOO_SMALL", 0x150},
    {"CKR_SAVED_STATE_INVALID", 0x160}, {"CKR_INFORMATION_SENSITIVE", 0x170},
    {"CKR_STATE_UNSAVEABLE", 0x180}, {"CKR_CRYPTOKI_NOT_INITIALIZED", 0x190},
    {"CKR_CRYPTOKI_ALREADY_INITIALIZED", 0x191}, {"CKR_MUTEX_BAD", 0x1a0},
    {"CKR_MUTEX_NOT_LOCKED", 0x1a1}, {"CKR_NEW_PIN_MODE", 0x1b0}, {"CKR_NEXT_OTP", 0x1b1},
    {"CKR_EXCEEDED_MAX_ITERATIONS", 0x1c0}, {"CKR_FIPS_SELF_TEST_FAILED", 0x1c1},
    {"CKR_LIBRARY_LOAD_FAILED", 0x1c2}, {"CKR_PIN_TOO_WEAK", 0x1c3},
    {"CKR_PUBLIC_KEY_INVALID", 0x1c4}, {"CKR_FUNCTION_REJECTED", 0x200},
    {"CKR_TOKEN_RESOURCE_EXCEEDED", 0x201}, {"CKR_OPERATION_CANCEL_FAILED", 0x202},
    {"CKR_KEY_EXHAUSTED", 0x203}, {"CKR_VENDOR_DEFINED", 0x80000000UL},
};
#define N_RV_NAMES (sizeof(rv_names) / sizeof(rv_names[0]))

EXPORT int p11shim_rv_from_name(const char *name, unsigned long *out)
{
    for (size_t i = 0; i < N_RV_NAMES; i++) {
        if (strcmp(rv_names[i].name, name) == 0) {
            *out = rv_names[i].value;
            return 0;
        }
    }
    return -1;
}

EXPORT const char *p11shim_rv_name(unsigned long rv)
{
    for (size_t i = 0; i < N_RV_NAMES; i++)
        if (rv_names[i].value == rv)
            return rv_names[i].name;
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Process state                                                             */
/* ------------------------------------------------------------------------ */

/*
 * Lock order (only ever taken in this order, and all taken by the fork
 * handlers): load_mu -> reload_mu -> rule_mu -> flush_mu.  No lock is held
 * while calling into the real module or while sleeping for a delay.
 */
static pthread_mutex_t load_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t reload_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t rule_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t flush_mu = PTHREAD_MUTEX_INITIALIZER;

static CK_FUNCTION_LIST *real_list;    /* atomic; set once under load_mu */
static char control_path[PATH_MAX];    /* "" = no control file */
static char stats_dir[PATH_MAX];       /* "" = no statistics files */
static int load_error_reported;

#define NSEC_PER_MSEC 1000000ULL
#define RELOAD_CHECK_NS (50 * NSEC_PER_MSEC)
#define FLUSH_INTERVAL_NS (200 * NSEC_PER_MSEC)

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Cheap clock (vDSO, jiffy resolution) for the reload throttle. */
static uint64_t coarse_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(uint64_t ns)
{
    struct timespec req = { (time_t)(ns / 1000000000ULL), (long)(ns % 1000000000ULL) }, rem;
    while (nanosleep(&req, &rem) != 0 && errno == EINTR)
        req = rem;
}

/* ------------------------------------------------------------------------ */
/* Rules                                                                     */
/* ------------------------------------------------------------------------ */

struct rule {
    int fn;                 /* function index, or -1 for `*` */
    uint64_t delay_ns;
    uint64_t jitter_ns;
    int has_rv;
    CK_RV rv;
    double probability;     /* 0..1 */
    uint64_t after;         /* pass the first `after` selected calls */
    int64_t count;          /* fire at most `count` times; -1 = unlimited */
    int has_seed;
    uint64_t seed;
    /* mutable state, under rule_mu */
    uint64_t seen;
    uint64_t applied;
    uint64_t rng;
};

struct ruleset {
    int n;
    int sel[NFUNCS];        /* rule index selected for each function, -1 = none */
    struct rule rules[];
};

static struct ruleset *rules;          /* under rule_mu */
/* Lock-free hint per function: 1 if the current rule set has a rule for it.
 * Calls of functions without a rule never take rule_mu. */
static unsigned char has_rule[NFUNCS]; /* atomic bytes, written under rule_mu */

/* identity of the control file as last read (all zero: absent) */
struct file_id { dev_t dev; ino_t ino; off_t size; time_t sec; long nsec; };
static struct file_id control_id;      /* under reload_mu */
static uint64_t last_check_ns;         /* atomic */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static double rng_unit(uint64_t *state)   /* uniform in [0, 1) */
{
    return (double)(splitmix64(state) >> 11) * (1.0 / 9007199254740992.0);
}

static void rule_reset_state(struct rule *r, int idx)
{
    r->seen = 0;
    r->applied = 0;
    if (r->has_seed)
        r->rng = r->seed;
    else
        r->rng = mono_ns() ^ ((uint64_t)getpid() << 32) ^ ((uint64_t)idx * 0x9E3779B97F4A7C15ULL)
                 ^ (uint64_t)(uintptr_t)r;
}

static int fn_index(const char *name)
{
    for (int i = 0; i < NFUNCS; i++)
        if (i != IDX_C_GetFunctionList && strcmp(fn_names[i], name) == 0)
            return i;
    return -2;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    if (!*s || *s == '-')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

static int parse_ms(const char *s, uint64_t *out_ns)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !(v >= 0.0) || v > 86400000.0)
        return -1;
    *out_ns = (uint64_t)(v * 1e6 + 0.5);
    return 0;
}

static int parse_rv(const char *s, CK_RV *out)
{
    unsigned long v;
    char *end;
    if (strncmp(s, "CKR_", 4) == 0)
        return p11shim_rv_from_name(s, out);
    if (!*s || *s == '-')
        return -1;
    errno = 0;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
        v = strtoul(s + 2, &end, 16);
    else
        v = strtoul(s, &end, 10);
    if (errno || *end || end == s)
        return -1;
    *out = v;
    return 0;
}

static void parse_warn(int lineno, const char *what, const char *tok)
{
    fprintf(stderr, "p11shim: %s line %d: %s '%s'; line ignored\n", control_path, lineno, what, tok);
}

/* Parse one line into *r; 1 = a rule, 0 = blank/comment, -1 = invalid. */
static int parse_line(char *line, int lineno, struct rule *r)
{
    char *hash = strchr(line, '#');
    if (hash)
        *hash = '\0';
    memset(r, 0, sizeof(*r));
    r->fn = -2;
    r->probability = 1.0;
    r->count = -1;
    int any = 0;
    char *save = NULL;
    for (char *tok = strtok_r(line, " \t\r\n", &save); tok; tok = strtok_r(NULL, " \t\r\n", &save)) {
        any = 1;
        char *eq = strchr(tok, '=');
        if (!eq || eq == tok) {
            parse_warn(lineno, "expected key=value, got", tok);
            return -1;
        }
        *eq = '\0';
        const char *key = tok, *val = eq + 1;
        int bad = 0;
        if (strcmp(key, "fn") == 0) {
            r->fn = strcmp(val, "*") == 0 ? -1 : fn_index(val);
            bad = r->fn == -2;
        } else if (strcmp(key, "delay_ms") == 0) {
            bad = parse_ms(val, &r->delay_ns);
        } else if (strcmp(key, "jitter_ms") == 0) {
            bad = parse_ms(val, &r->jitter_ns);
        } else if (strcmp(key, "rv") == 0) {
            bad = parse_rv(val, &r->rv);
            r->has_rv = !bad;
        } else if (strcmp(key, "probability") == 0) {
            char *end;
            errno = 0;
            r->probability = strtod(val, &end);
            bad = errno || *end || !*val || !(r->probability >= 0.0 && r->probability <= 1.0);
        } else if (strcmp(key, "after") == 0) {
            bad = parse_u64(val, &r->after);
        } else if (strcmp(key, "count") == 0) {
            uint64_t c;
            bad = parse_u64(val, &c) || c > INT64_MAX;
            r->count = (int64_t)c;
        } else if (strcmp(key, "seed") == 0) {
            bad = parse_u64(val, &r->seed);
            r->has_seed = !bad;
        } else {
            *eq = '=';
            parse_warn(lineno, "unknown key in", tok);
            return -1;
        }
        if (bad) {
            *eq = '=';
            parse_warn(lineno, "bad value in", tok);
            return -1;
        }
    }
    if (!any)
        return 0;
    if (r->fn == -2) {
        parse_warn(lineno, "missing fn= in rule", "");
        return -1;
    }
    return 1;
}

/* Read and parse the control file; NULL if absent or without rules. */
static struct ruleset *load_rules(FILE *f)
{
    struct ruleset *rs = NULL;
    int cap = 0, lineno = 0;
    char line[1024];

    while (fgets(line, sizeof(line), f)) {
        lineno++;
        struct rule r;
        if (parse_line(line, lineno, &r) != 1)
            continue;
        if (!rs || rs->n == cap) {
            int ncap = cap ? cap * 2 : 8;
            struct ruleset *g = realloc(rs, sizeof(*rs) + (size_t)ncap * sizeof(struct rule));
            if (!g)
                break;
            if (!rs)
                g->n = 0;
            rs = g;
            cap = ncap;
        }
        rs->rules[rs->n++] = r;
    }
    if (!rs)
        return NULL;
    /* first rule naming the function wins; otherwise the first `*` rule */
    for (int f_i = 0; f_i < NFUNCS; f_i++) {
        int star = -1, pick = -1;
        for (int i = 0; i < rs->n && pick < 0; i++) {
            if (rs->rules[i].fn == f_i)
                pick = i;
            else if (rs->rules[i].fn == -1 && star < 0)
                star = i;
        }
        rs->sel[f_i] = pick >= 0 ? pick : star;
    }
    rs->sel[IDX_C_GetFunctionList] = -1;
    for (int i = 0; i < rs->n; i++)
        rule_reset_state(&rs->rules[i], i);
    return rs;
}

/* Re-read the control file if it changed.  Caller holds reload_mu. */
static void reload_locked(int force)
{
    struct file_id id;
    struct stat st;
    FILE *f = NULL;

    memset(&id, 0, sizeof(id));
    /* stat the opened file so identity and content belong together */
    f = fopen(control_path, "re");
    if (f && fstat(fileno(f), &st) == 0) {
        id.dev = st.st_dev;
        id.ino = st.st_ino;
        id.size = st.st_size;
        id.sec = st.st_mtim.tv_sec;
        id.nsec = st.st_mtim.tv_nsec;
    }
    if (!force && memcmp(&id, &control_id, sizeof(id)) == 0) {
        if (f)
            fclose(f);
        return;
    }
    struct ruleset *rs = f ? load_rules(f) : NULL;
    if (f)
        fclose(f);
    control_id = id;

    pthread_mutex_lock(&rule_mu);
    struct ruleset *old = rules;
    rules = rs;
    for (int i = 0; i < NFUNCS; i++)
        __atomic_store_n(&has_rule[i], rs && rs->sel[i] >= 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&rule_mu);
    free(old);
}

/*
 * Called on every call: at most once per RELOAD_CHECK_NS one caller checks
 * the file.  The check is a stat() of the path; the file is read only when
 * its identity, size or mtime changed.
 */
static void maybe_reload(void)
{
    if (!control_path[0])
        return;
    uint64_t now = coarse_ns();
    uint64_t last = __atomic_load_n(&last_check_ns, __ATOMIC_RELAXED);
    if (now - last < RELOAD_CHECK_NS)
        return;
    if (!__atomic_compare_exchange_n(&last_check_ns, &last, now, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        return;
    if (pthread_mutex_trylock(&reload_mu) != 0)
        return;
    struct stat st;
    struct file_id id;
    memset(&id, 0, sizeof(id));
    if (stat(control_path, &st) == 0) {
        id.dev = st.st_dev;
        id.ino = st.st_ino;
        id.size = st.st_size;
        id.sec = st.st_mtim.tv_sec;
        id.nsec = st.st_mtim.tv_nsec;
    }
    if (memcmp(&id, &control_id, sizeof(id)) != 0)
        reload_locked(0);
    pthread_mutex_unlock(&reload_mu);
}

struct decision { uint64_t delay_ns; int has_rv; CK_RV rv; };

/* 1 if a rule fires for this call (fills *d), else 0. */
static int decide(int fn, struct decision *d)
{
    if (!__atomic_load_n(&has_rule[fn], __ATOMIC_ACQUIRE))
        return 0;
    int fire = 0;
    pthread_mutex_lock(&rule_mu);
    struct ruleset *rs = rules;
    int i = rs ? rs->sel[fn] : -1;
    if (i >= 0) {
        struct rule *r = &rs->rules[i];
        r->seen++;
        if (r->seen > r->after
            && (r->count < 0 || r->applied < (uint64_t)r->count)
            && (r->probability >= 1.0 || rng_unit(&r->rng) < r->probability)) {
            r->applied++;
            fire = 1;
            int64_t delay = (int64_t)r->delay_ns;
            if (r->jitter_ns) {
                /* uniform in [delay - jitter, delay + jitter], never below 0 */
                delay += (int64_t)(rng_unit(&r->rng) * (double)(2 * r->jitter_ns + 1)) - (int64_t)r->jitter_ns;
                if (delay < 0)
                    delay = 0;
            }
            d->delay_ns = (uint64_t)delay;
            d->has_rv = r->has_rv;
            d->rv = r->rv;
        }
    }
    pthread_mutex_unlock(&rule_mu);
    return fire;
}

/* ------------------------------------------------------------------------ */
/* Statistics                                                                */
/* ------------------------------------------------------------------------ */

#define RV_SLOTS 8

struct fn_stats {
    uint64_t calls;          /* every call of the function, faulted or not */
    uint64_t errors;         /* calls that returned rv != CKR_OK */
    uint64_t total_ns;       /* time inside the real module */
    uint64_t injected;       /* calls answered by a rule's rv */
    uint64_t rv_key[RV_SLOTS];   /* rv + 1 (0 = free slot) */
    uint64_t rv_count[RV_SLOTS];
    uint64_t rv_other;       /* errors that found no free slot */
};

static struct fn_stats stats[NFUNCS];   /* updated with relaxed atomics */
static uint64_t stats_gen;              /* bumped per call; flush when it moved */
static uint64_t flushed_gen;            /* under flush_mu */
static uint64_t last_flush_ns;          /* atomic */
static uint64_t process_start_ns;       /* identifies this process incarnation */
static pid_t stats_pid;
static int flusher_started;             /* atomic */
static int no_threads;                  /* CKF_LIBRARY_CANT_CREATE_OS_THREADS */
static int stats_dir_error_reported;

static void count_rv(struct fn_stats *s, CK_RV rv)
{
    uint64_t key = (uint64_t)rv + 1;
    for (int i = 0; i < RV_SLOTS; i++) {
        uint64_t cur = __atomic_load_n(&s->rv_key[i], __ATOMIC_ACQUIRE);
        if (cur == 0) {
            uint64_t zero = 0;
            if (__atomic_compare_exchange_n(&s->rv_key[i], &zero, key, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                cur = key;
            else
                cur = zero;    /* somebody else claimed it: its value */
        }
        if (cur == key) {
            __atomic_fetch_add(&s->rv_count[i], 1, __ATOMIC_RELAXED);
            return;
        }
    }
    __atomic_fetch_add(&s->rv_other, 1, __ATOMIC_RELAXED);
}

static void record(int fn, CK_RV rv, uint64_t elapsed_ns, int injected)
{
    struct fn_stats *s = &stats[fn];
    __atomic_fetch_add(&s->calls, 1, __ATOMIC_RELAXED);
    if (rv != CKR_OK) {
        __atomic_fetch_add(&s->errors, 1, __ATOMIC_RELAXED);
        count_rv(s, rv);
    }
    if (elapsed_ns)
        __atomic_fetch_add(&s->total_ns, elapsed_ns, __ATOMIC_RELAXED);
    if (injected)
        __atomic_fetch_add(&s->injected, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&stats_gen, 1, __ATOMIC_RELEASE);
}

/*
 * Write <stats_dir>/<pid>.stats (through a temporary file and rename(), so a
 * reader never sees half a file).  Format, one line per function called:
 *     fn calls errors total_ns injected [RVNAME=n ...]
 * after a header `# p11shim-stats v1 pid=<pid> start_ns=<id>`.
 */
static void flush_stats(int force)
{
    if (!stats_dir[0])
        return;
    pthread_mutex_lock(&flush_mu);
    uint64_t gen = __atomic_load_n(&stats_gen, __ATOMIC_ACQUIRE);
    if ((!force && gen == flushed_gen) || gen == 0) {
        pthread_mutex_unlock(&flush_mu);
        return;
    }
    char path[PATH_MAX + 32], tmp[PATH_MAX + 48];
    pid_t pid = getpid();
    snprintf(path, sizeof(path), "%s/%d.stats", stats_dir, (int)pid);
    snprintf(tmp, sizeof(tmp), "%s/.%d.stats.tmp", stats_dir, (int)pid);
    FILE *f = fopen(tmp, "we");
    if (!f && errno == ENOENT && mkdir(stats_dir, 0777) == 0)
        f = fopen(tmp, "we");
    if (!f) {
        if (!stats_dir_error_reported) {
            stats_dir_error_reported = 1;
            fprintf(stderr, "p11shim: cannot write statistics in P11SHIM_STATS_DIR=%s: %s\n",
                    stats_dir, strerror(errno));
        }
        pthread_mutex_unlock(&flush_mu);
        return;
    }
    fprintf(f, "# p11shim-stats v1 pid=%d start_ns=%llu\n", (int)pid,
            (unsigned long long)process_start_ns);
    fprintf(f, "# fn calls errors total_ns injected [rv=count ...]\n");
    for (int i = 0; i < NFUNCS; i++) {
        struct fn_stats *s = &stats[i];
        uint64_t calls = __atomic_load_n(&s->calls, __ATOMIC_RELAXED);
        if (!calls)
            continue;
        fprintf(f, "%s %llu %llu %llu %llu", fn_names[i], (unsigned long long)calls,
                (unsigned long long)__atomic_load_n(&s->errors, __ATOMIC_RELAXED),
                (unsigned long long)__atomic_load_n(&s->total_ns, __ATOMIC_RELAXED),
                (unsigned long long)__atomic_load_n(&s->injected, __ATOMIC_RELAXED));
        for (int j = 0; j < RV_SLOTS; j++) {
            uint64_t key = __atomic_load_n(&s->rv_key[j], __ATOMIC_ACQUIRE);
            uint64_t n = __atomic_load_n(&s->rv_count[j], __ATOMIC_RELAXED);
            if (!key || !n)
                continue;
            const char *name = p11shim_rv_name((CK_RV)(key - 1));
            if (name)
                fprintf(f, " %s=%llu", name, (unsigned long long)n);
            else
                fprintf(f, " 0x%lx=%llu", (unsigned long)(key - 1), (unsigned long long)n);
        }
        uint64_t other = __atomic_load_n(&s->rv_other, __ATOMIC_RELAXED);
        if (other)
            fprintf(f, " other=%llu", (unsigned long long)other);
        fputc('\n', f);
    }
    int ok = fflush(f) == 0;
    ok = (fclose(f) == 0) && ok;
    if (ok && rename(tmp, path) == 0)
        flushed_gen = gen;
    else
        unlink(tmp);
    __atomic_store_n(&last_flush_ns, mono_ns(), __ATOMIC_RELAXED);
    pthread_mutex_unlock(&flush_mu);
}

/*
 * Background flusher: writes the file at most every FLUSH_INTERVAL_NS when
 * something changed, so the numbers stay fresh while the process is idle and
 * survive a SIGKILL (uWSGI workers are often killed that way).  It is started
 * lazily from a PKCS#11 call, again in a forked child, and never when the
 * application forbids library threads.  The shim is linked -z nodelete (and
 * pins itself, see pin_self) so the thread's code can never be unmapped.
 */
static void *flusher_main(void *arg)
{
    (void)arg;
    for (;;) {
        sleep_ns(FLUSH_INTERVAL_NS);
        flush_stats(0);
    }
    return NULL;
}

static void pin_self(void)
{
    Dl_info info;
    if (dladdr((void *)&pin_self, &info) && info.dli_fname)
        (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

static void maybe_start_flusher(void)
{
    if (!stats_dir[0] || __atomic_load_n(&flusher_started, __ATOMIC_ACQUIRE))
        return;
    if (__atomic_load_n(&no_threads, __ATOMIC_RELAXED)) {
        /* no thread allowed: flush from the calls themselves */
        uint64_t now = mono_ns();
        if (now - __atomic_load_n(&last_flush_ns, __ATOMIC_RELAXED) >= FLUSH_INTERVAL_NS)
            flush_stats(0);
        return;
    }
    int expected = 0;
    if (!__atomic_compare_exchange_n(&flusher_started, &expected, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return;
    pin_self();
    pthread_attr_t attr;
    pthread_t tid;
    sigset_t all, old;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    /* the thread inherits this mask: signals stay with the application's threads */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    if (pthread_create(&tid, &attr, flusher_main, NULL) != 0)
        __atomic_store_n(&no_threads, 1, __ATOMIC_RELAXED);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
}

/* ------------------------------------------------------------------------ */
/* Loading the real module                                                   */
/* ------------------------------------------------------------------------ */

static void copy_env(char *dst, size_t size, const char *name)
{
    const char *v = setting(name);
    dst[0] = '\0';
    if (v && strlen(v) < size)
        strcpy(dst, v);
}

/* 0 when the real module is loaded; -1 (with a message on stderr) if not. */
static int load_real(int verbose)
{
    int ret = -1;
    pthread_mutex_lock(&load_mu);
    if (real_list) {
        pthread_mutex_unlock(&load_mu);
        return 0;
    }
    const char *path = setting("P11SHIM_MODULE");
    char why[512];
    why[0] = '\0';
    if (!path || !*path) {
        snprintf(why, sizeof(why), "P11SHIM_MODULE is not set: set it to the path of the real "
                 "PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so), in the environment or in "
                 "the shim's settings file ($P11SHIM_CONFIG, default: the shim's path + .conf)");
    } else {
        void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            const char *e = dlerror();
            snprintf(why, sizeof(why), "cannot load P11SHIM_MODULE=%s: %s", path, e ? e : "?");
        } else {
            CK_FUNCTION_LIST *list = NULL;
            get_function_list_fn gfl = (get_function_list_fn)dlsym(h, "C_GetFunctionList");
            get_interface_fn gi = (get_interface_fn)dlsym(h, "C_GetInterface");
            if (gfl == C_GetFunctionList || gi == C_GetInterface) {
                snprintf(why, sizeof(why), "P11SHIM_MODULE=%s is the shim itself", path);
            } else if (gfl) {
                CK_RV rv = gfl(&list);
                if (rv != CKR_OK || !list)
                    snprintf(why, sizeof(why), "C_GetFunctionList of %s failed: 0x%lx", path, rv);
            } else if (gi) {
                /* a 3.x-only module: its 3.x list starts with the 2.40 layout */
                CK_INTERFACE *iface = NULL;
                CK_RV rv = gi((CK_UTF8CHAR_PTR)"PKCS 11", NULL, &iface, 0);
                if (rv == CKR_OK && iface && iface->pFunctionList)
                    list = iface->pFunctionList;
                else
                    snprintf(why, sizeof(why), "C_GetInterface of %s failed: 0x%lx", path, rv);
            } else {
                snprintf(why, sizeof(why), "%s exports neither C_GetFunctionList nor C_GetInterface", path);
            }
            if (list) {
                copy_env(control_path, sizeof(control_path), "P11SHIM_CONTROL");
                copy_env(stats_dir, sizeof(stats_dir), "P11SHIM_STATS_DIR");
                if (control_path[0]) {
                    /* first read synchronously, so even the first call sees the rules */
                    pthread_mutex_lock(&reload_mu);
                    reload_locked(1);
                    __atomic_store_n(&last_check_ns, coarse_ns(), __ATOMIC_RELAXED);
                    pthread_mutex_unlock(&reload_mu);
                }
                __atomic_store_n(&real_list, list, __ATOMIC_RELEASE);
                ret = 0;
            } else {
                dlclose(h);
            }
        }
    }
    if (ret != 0 && (verbose || !load_error_reported)) {
        load_error_reported = 1;
        fprintf(stderr, "p11shim: %s\n", why);
    }
    pthread_mutex_unlock(&load_mu);
    return ret;
}

/* ------------------------------------------------------------------------ */
/* The call path                                                             */
/* ------------------------------------------------------------------------ */

/*
 * Before forwarding: make sure the real module is loaded, apply the rule for
 * this function.  Returns 1 when the call is already answered (*rv set):
 * the module could not be loaded, or a rule injected its rv.
 */
static inline int shim_enter(int fn, CK_FUNCTION_LIST **real, CK_RV *rv)
{
    CK_FUNCTION_LIST *r = __atomic_load_n(&real_list, __ATOMIC_ACQUIRE);
    *real = NULL;
    if (!r) {
        if (load_real(fn == IDX_C_Initialize) != 0) {
            *rv = CKR_GENERAL_ERROR;
            return 1;
        }
        r = __atomic_load_n(&real_list, __ATOMIC_ACQUIRE);
    }
    *real = r;
    maybe_start_flusher();
    maybe_reload();
    struct decision d;
    if (decide(fn, &d)) {
        if (d.delay_ns)
            sleep_ns(d.delay_ns);
        if (d.has_rv) {
            *rv = d.rv;
            record(fn, d.rv, 0, 1);
            return 1;
        }
    }
    return 0;
}

static inline void shim_leave(int fn, CK_RV rv, uint64_t t0)
{
    uint64_t dt = mono_ns() - t0;
    record(fn, rv, dt ? dt : 1, 0);
}

#define P11_WRAP(name, params, args) \
    EXPORT CK_RV name params \
    { \
        CK_FUNCTION_LIST *real; \
        CK_RV rv; \
        if (shim_enter(IDX_##name, &real, &rv)) \
            return rv; \
        int held = store_enter(IDX_##name); \
        uint64_t t0 = mono_ns(); \
        rv = real->name args; \
        shim_leave(IDX_##name, rv, t0); \
        store_leave(held); \
        return rv; \
    }

#define P11_WRAP_DRAIN(name, params, args) \
    EXPORT CK_RV name params \
    { \
        CK_FUNCTION_LIST *real; \
        CK_RV rv; \
        if (shim_enter(IDX_##name, &real, &rv)) { \
            if (real && rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL) \
                drain_##name args; \
            return rv; \
        } \
        uint64_t t0 = mono_ns(); \
        rv = real->name args; \
        shim_leave(IDX_##name, rv, t0); \
        return rv; \
    }

/*
 * Ending operations.  PKCS#11 says a failed C_Encrypt, C_Sign, C_*Update,
 * C_*Final, ... terminates the active operation, so the application's next
 * C_EncryptInit must work.  When a rule fails such a call, the real module
 * never saw it and would still hold the operation (SoftHSM then answers
 * CKR_OPERATION_ACTIVE forever on that session).  So after an injected
 * failure the shim finishes the operation in the real module itself: it
 * replays the call (or calls the matching C_*Final) into a scratch buffer and
 * discards the result.  The application's buffers are not touched.  These
 * extra real calls are not counted in the statistics.  Not done for the
 * dual-function C_*Update calls (rarely implemented), nor when the injected
 * code is CKR_OK or CKR_BUFFER_TOO_SMALL (which leave the operation active).
 */
typedef CK_RV (*final_fn)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG_PTR);
typedef CK_RV (*single_fn)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
#define DRAIN_MAX_BYTES (64UL << 20)

static void finish_final(final_fn f, CK_SESSION_HANDLE h)
{
    CK_ULONG len = 0;
    if (f(h, NULL, &len) != CKR_OK || len > DRAIN_MAX_BYTES)
        return;                  /* an error already ended the operation */
    CK_BYTE *buf = malloc(len ? len : 1);
    if (!buf)
        return;
    f(h, buf, &len);
    free(buf);
}

static void finish_single(single_fn f, CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len)
{
    CK_ULONG len = 0;
    if (f(h, in, in_len, NULL, &len) != CKR_OK || len > DRAIN_MAX_BYTES)
        return;
    CK_BYTE *buf = malloc(len ? len : 1);
    if (!buf)
        return;
    f(h, in, in_len, buf, &len);
    free(buf);
}

static void finish_verify(CK_SESSION_HANDLE h)
{
    CK_BYTE dummy[1] = {0};      /* wrong length: the module ends the operation */
    real_list->C_VerifyFinal(h, dummy, sizeof(dummy));
}

#define UNUSED __attribute__((unused))

static void drain_C_Encrypt(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len,
                            UNUSED CK_BYTE_PTR out, UNUSED CK_ULONG_PTR out_len)
{ finish_single(real_list->C_Encrypt, h, in, in_len); }
static void drain_C_Decrypt(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len,
                            UNUSED CK_BYTE_PTR out, UNUSED CK_ULONG_PTR out_len)
{ finish_single(real_list->C_Decrypt, h, in, in_len); }
static void drain_C_Digest(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len,
                           UNUSED CK_BYTE_PTR out, UNUSED CK_ULONG_PTR out_len)
{ finish_single(real_list->C_Digest, h, in, in_len); }
static void drain_C_Sign(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len,
                         UNUSED CK_BYTE_PTR out, UNUSED CK_ULONG_PTR out_len)
{ finish_single(real_list->C_Sign, h, in, in_len); }
static void drain_C_SignRecover(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len,
                                UNUSED CK_BYTE_PTR out, UNUSED CK_ULONG_PTR out_len)
{ finish_single(real_list->C_SignRecover, h, in, in_len); }
static void drain_C_VerifyRecover(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len,
                                  UNUSED CK_BYTE_PTR out, UNUSED CK_ULONG_PTR out_len)
{ finish_single(real_list->C_VerifyRecover, h, in, in_len); }
static void drain_C_Verify(CK_SESSION_HANDLE h, CK_BYTE_PTR data, CK_ULONG data_len,
                           CK_BYTE_PTR sig, CK_ULONG sig_len)
{ real_list->C_Verify(h, data, data_len, sig, sig_len); }

static void drain_C_EncryptUpdate(CK_SESSION_HANDLE h, UNUSED CK_BYTE_PTR a, UNUSED CK_ULONG b,
                                  UNUSED CK_BYTE_PTR c, UNUSED CK_ULONG_PTR d)
{ finish_final(real_list->C_EncryptFinal, h); }
static void drain_C_DecryptUpdate(CK_SESSION_HANDLE h, UNUSED CK_BYTE_PTR a, UNUSED CK_ULONG b,
                                  UNUSED CK_BYTE_PTR c, UNUSED CK_ULONG_PTR d)
{ finish_final(real_list->C_DecryptFinal, h); }
static void drain_C_EncryptFinal(CK_SESSION_HANDLE h, UNUSED CK_BYTE_PTR a, UNUSED CK_ULONG_PTR b)
{ finish_final(real_list->C_EncryptFinal, h); }
static void drain_C_DecryptFinal(CK_SESSION_HANDLE h, UNUSED CK_BYTE_PTR a, UNUSED CK_ULONG_PTR b)
{ finish_final(real_list->C_DecryptFinal, h); }
static void drain_C_DigestUpdate(CK_SESSION_HANDLE h, UNUSED CK_BYTE_PTR a, UNUSED CK_ULONG b)
{ finish_final(real_list->C_DigestFinal, h); }
static void drain_C_DigestKey(CK_SESSION_HANDLE h, UNUSED CK_OBJECT_HANDLE k)
{ finish_final(real_list->C_DigestFinal, h); }
static void drain_C_DigestFinal(CK_SESSION_HANDLE h, UNUSED CK_BYTE_PTR a, UNUSED CK_ULONG_PTR b)
{ finish_final(real_list->C_DigestFinal, h); }
static void drain_C_SignUpdate(CK_SESSION_HANDLE h, UNUSED CK_BYTE_PTR a, UNUSED CK_ULONG b)
{ finish_final(real_list->C_SignFinal, h); }
static void drain_C_SignFinal(CK_SESSION_HANDLE h, UNUSED CK_BYTE_PTR a, UNUSED CK_ULONG_PTR b)
{ finish_final(real_list->C_SignFinal, h); }
static void drain_C_VerifyUpdate(CK_SESSION_HANDLE h, UNUSED CK_BYTE_PTR a, UNUSED CK_ULONG b)
{ finish_verify(h); }
static void drain_C_VerifyFinal(CK_SESSION_HANDLE h, UNUSED CK_BYTE_PTR a, UNUSED CK_ULONG b)
{ finish_verify(h); }

P11_FUNCS(P11_WRAP, P11_WRAP_DRAIN, P11_NOTHING, P11_NOTHING)

EXPORT CK_RV C_Initialize(CK_VOID_PTR pInitArgs)
{
    CK_FUNCTION_LIST *real;
    CK_RV rv;
    if (pInitArgs && (((CK_C_INITIALIZE_ARGS *)pInitArgs)->flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS))
        __atomic_store_n(&no_threads, 1, __ATOMIC_RELAXED);
    if (shim_enter(IDX_C_Initialize, &real, &rv))
        return rv;
    int held = store_enter(IDX_C_Initialize);
    uint64_t t0 = mono_ns();
    rv = real->C_Initialize(pInitArgs);
    shim_leave(IDX_C_Initialize, rv, t0);
    store_leave(held);
    return rv;
}

EXPORT CK_RV C_Finalize(CK_VOID_PTR pReserved)
{
    CK_FUNCTION_LIST *real;
    CK_RV rv;
    if (!shim_enter(IDX_C_Finalize, &real, &rv)) {
        int held = store_enter(IDX_C_Finalize);
        uint64_t t0 = mono_ns();
        rv = real->C_Finalize(pReserved);
        shim_leave(IDX_C_Finalize, rv, t0);
        store_leave(held);
    }
    /* The real module stays loaded: a later C_Initialize reuses it. */
    flush_stats(0);
    return rv;
}

/* Served by the shim; never faulted, never counted, does not load the real module. */
EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
    if (!ppFunctionList)
        return CKR_ARGUMENTS_BAD;
    *ppFunctionList = &shim_list;
    return CKR_OK;
}

/*
 * PKCS#11 3.0 discovery.  The shim offers exactly one interface, "PKCS 11"
 * with its 2.40 function list, whatever the real module offers: every call
 * then goes through the wrappers (a 3.0 list of the real module would bypass
 * them).  Vendor interfaces of the real module are not passed on.
 */
EXPORT CK_RV C_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount)
{
    if (!pulCount)
        return CKR_ARGUMENTS_BAD;
    if (!pInterfacesList) {
        *pulCount = 1;
        return CKR_OK;
    }
    if (*pulCount < 1) {
        *pulCount = 1;
        return CKR_BUFFER_TOO_SMALL;
    }
    pInterfacesList[0] = shim_interface;
    *pulCount = 1;
    return CKR_OK;
}

EXPORT CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
                            CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags)
{
    if (!ppInterface)
        return CKR_ARGUMENTS_BAD;
    if (pInterfaceName && strcmp((const char *)pInterfaceName, "PKCS 11") != 0)
        return CKR_ARGUMENTS_BAD;
    if (pVersion && pVersion->major != shim_list.version.major)
        return CKR_ARGUMENTS_BAD;      /* e.g. python-pkcs11 asking for 3.0 / 3.2 */
    if (flags & ~shim_interface.flags)
        return CKR_ARGUMENTS_BAD;
    *ppInterface = &shim_interface;
    return CKR_OK;
}

/* ------------------------------------------------------------------------ */
/* fork() and process lifetime                                               */
/* ------------------------------------------------------------------------ */

static void atfork_prepare(void)
{
    pthread_mutex_lock(&store_mu);
    pthread_mutex_lock(&load_mu);
    pthread_mutex_lock(&reload_mu);
    pthread_mutex_lock(&rule_mu);
    pthread_mutex_lock(&flush_mu);
}

static void atfork_parent(void)
{
    pthread_mutex_unlock(&flush_mu);
    pthread_mutex_unlock(&rule_mu);
    pthread_mutex_unlock(&reload_mu);
    pthread_mutex_unlock(&load_mu);
    pthread_mutex_unlock(&store_mu);
}

/*
 * The child is a new process for the statistics (own <pid>.stats, counts
 * start at 0, so summing all files never counts a call twice) and for the
 * rules (after/count counters and seeded random streams restart).  The
 * flusher thread did not survive the fork; the next call starts a new one.
 */
static void atfork_child(void)
{
    struct timespec ts;
    memset(stats, 0, sizeof(stats));
    stats_gen = 0;
    flushed_gen = 0;
    last_flush_ns = 0;
    flusher_started = 0;
    stats_pid = getpid();
    clock_gettime(CLOCK_REALTIME, &ts);
    process_start_ns = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
    if (rules)
        for (int i = 0; i < rules->n; i++)
            rule_reset_state(&rules->rules[i], i);
    last_check_ns = 0;
    /* The lock file's open description is shared with the parent, and flock()
       would not exclude the two: the child opens its own on first use. */
    if (store_fd >= 0) {
        close(store_fd);
        store_fd = -1;
    }
    atfork_parent();
}

__attribute__((constructor)) static void shim_load(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    process_start_ns = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
    stats_pid = getpid();
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* At exit (and, were the shim ever unloaded, at dlclose): last statistics. */
__attribute__((destructor)) static void shim_unload(void)
{
    if (stats_pid == getpid())
        flush_stats(0);
}
