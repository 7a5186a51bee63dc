"""The Barbican bugs this project has reproduced: one entry each, one home.

The suites pin each bug as a strict xfail whose reason comes from here
(`known_bug("metadata-put-deadlock")`), and `barbican-harness known-bugs` probes a live
Barbican for the same entries, so the two can never drift apart. An entry says what
the bug is, where it is known, what a probe sees when it is there, and, when no API
call can show it, why not.

Versions: `measured_in` are the releases the bug was reproduced on (the suites run on
Barbican 23.0.0). `code_in` are the releases whose source was read and has the same
code path (the upgrade gate's cached venvs: 14.0.0, 20.0.0, 21.0.0, 22.0.0, 23.0.0);
no release read so far has a fix.
"""

from __future__ import annotations

from dataclasses import dataclass

# Why no API call can show a p11_crypto plugin bug (they live between Barbican and its module).
_P11_NOT_CHECKABLE = ("needs a PKCS#11 module loaded by Barbican's plugin, which no API call reaches: "
                      "`qualify-hsm` and tests/test_barbican_p11_plugin.py reproduce it with Barbican's own code")

CODE_READ = ("14.0.0", "20.0.0", "21.0.0", "22.0.0", "23.0.0")


@dataclass(frozen=True)
class KnownBug:
    id: str
    title: str                          # one line, what an operator sees
    cause: str                          # why, in Barbican's code (the xfail reason)
    present_means: str                  # what the probe observes when the bug is there
    conditions: str = "any deployment"  # where it can happen at all
    measured_in: tuple[str, ...] = ("23.0.0",)
    code_in: tuple[str, ...] = CODE_READ
    not_checkable: str | None = None    # why no API probe can tell (None: `known-bugs` probes it)
    pinned_by: tuple[str, ...] = ()     # the strict-xfail tests that reproduce it

    @property
    def xfail_reason(self) -> str:
        return f"Barbican bug [{self.id}]: {' '.join(self.cause.split())}"


BUGS: tuple[KnownBug, ...] = (
    KnownBug(
        id="metadata-put-deadlock",
        title="concurrent PUT /v1/secrets/{id}/metadata answer 500 (InnoDB deadlock, not retried)",
        cause="PUT /v1/secrets/{id}/metadata replaces a secret's metadata with a DELETE of its rows and new "
              "INSERTs in one transaction; InnoDB's gap locks make concurrent PUTs deadlock (1213), on different "
              "secrets too, and Barbican neither retries (no oslo_db wrap_db_retry on DBDeadlock) nor maps it: the "
              "client gets 500 'Secret metadata creation failure seen'. Measured: 55 of 400 PUTs with 8 threads "
              "over 16 secrets and 2 nodes; 5-10% of the PUTs with 8 threads over 2 secrets (8 keys each) on one "
              "node; seen under the campaign's load too",
        present_means="a metadata PUT (8 keys) answers 500 while 8 threads PUT metadata on 2 probe secrets "
                      "(timing-dependent: 'absent' means not reproduced in 400 PUTs)",
        conditions="MariaDB/MySQL (InnoDB), concurrent metadata writers",
        pinned_by=("tests/test_barbican_deadlocks.py::test_concurrent_metadata_puts_on_different_secrets_all_succeed",),
    ),
    KnownBug(
        id="payload-wildcard-content-type",
        title="GET .../payload with Accept */* answers Content-Type '*/*'",
        cause="with Accept */* the payload response's Content-Type header is the literal '*/*' "
              "(secrets.py pecan.override_template('', accept_header)), not the stored content type "
              "resources.get_secret actually used; '*/*' is a media range, not a valid Content-Type",
        present_means="a text/plain secret's payload, read with Accept */*, comes back with Content-Type */*",
        pinned_by=("conformance/api/test_secrets.py::test_payload_with_wildcard_accept_has_the_stored_content_type",),
    ),
    KnownBug(
        id="name-filter-plus-sign",
        title="a secret whose name contains '+' cannot be found with ?name=",
        cause="the secrets controller runs parse.unquote_plus() on the already-decoded 'name' query value, so "
              "a '+' in a secret's name becomes a space and the secret can never be found by name",
        present_means="GET /v1/secrets?name=<name with '+'> (sent as %2B) does not list the probe's secret",
        pinned_by=("conformance/api/test_secret_lists.py::test_name_filter_with_plus_sign",),
    ),
    KnownBug(
        id="name-filter-like-wildcards",
        title="'_' and '%' in ?name= (and alg/mode) are SQL LIKE wildcards",
        cause="name/alg/mode filters use SQL LIKE (repositories.get_secret_list), so '_' and '%' in the value "
              "are wildcards: name=cf_x matches 'cf-x' and name=% matches every secret; the API reference "
              "documents an equality filter",
        present_means="GET /v1/secrets?name=<the probe secret's name with '-' replaced by '_'> lists it",
        pinned_by=("conformance/api/test_secret_lists.py::test_name_filter_is_not_a_pattern",),
    ),
    KnownBug(
        id="base64-payload-not-validated",
        title="a payload declared base64 that is not base64 is accepted and stored",
        cause="a payload declared base64 is not checked strictly: the one-step validator uses base64.b64decode() "
              "without validate=True (non-alphabet characters are silently dropped) and the two-step PUT does "
              "not check at all, so non-base64 text is accepted (201/204) and stored; reading it back gives 204 "
              "with an empty body (or the wrong bytes)",
        present_means="POST /v1/secrets (or the two-step PUT) with payload '###' and encoding base64 is "
                      "accepted instead of 400",
        pinned_by=("conformance/api/test_secrets.py::test_invalid_base64_payload_is_400",),
    ),
    KnownBug(
        id="transport-key-get-500",
        title="GET of an unknown transport key answers 500 instead of 404",
        cause="TransportKeyController.on_get calls repo.get() without suppress_exception, which raises "
              "exception.NotFound (not an HTTP exception), so GET of an unknown or deleted transport key is 500 "
              "'Transport Key retrieval failure seen - please contact site administrator.' instead of 404 (the "
              "controller's own 'Transport Key not found' branch is unreachable)",
        present_means="GET /v1/transport_keys/<random uuid> answers 500",
        pinned_by=("conformance/api/test_transport_keys.py::test_get_unknown_transport_key_is_404",),
    ),
    KnownBug(
        id="transport-keys-method-no-response",
        title="an unsupported method on /v1/transport_keys gets no HTTP response at all",
        cause="TransportKeysController.index / TransportKeyController.index are declared "
              "index(self, external_project_id, **kwargs) but pecan calls them without it, so an unsupported "
              "method raises TypeError ('missing 1 required positional argument') outside handle_exceptions; "
              "uWSGI then closes the connection without any HTTP response (logged as a 500 with 0 headers)",
        present_means="PUT /v1/transport_keys gets no response (connection closed) or a 5xx instead of 405",
        pinned_by=("conformance/api/test_errors.py::test_transport_keys_method_not_allowed",),
    ),
    KnownBug(
        id="unknown-subpath-500",
        title="unknown sub-paths of containers, payloads and metadata keys answer 500 instead of 404",
        cause="ContainerController.on_get, SecretController.payload and SecretMetadatumController.on_get/on_put "
              "get the unknown remainder of the path as an extra argument, raise TypeError and answer 500 '... "
              "failure seen - please contact site administrator.' instead of 404",
        present_means="GET {container}/bogus, GET {secret}/payload/extra, GET or PUT "
                      "{secret}/metadata/key/extra answers 500",
        pinned_by=("conformance/api/test_errors.py::test_unknown_subpath_is_404_not_500",),
    ),
    KnownBug(
        id="metadata-409-message-truncated",
        title="the 409 of a metadata key mismatch is cut off ('... does not match key in the ')",
        cause="secretmeta.SecretMetadatumController.on_put builds the message from two string statements (the "
              "second, 'request url.', is a no-op expression), so the 409 description is truncated to 'Key in "
              "request data does not match key in the '",
        present_means="PUT {secret}/metadata/url-key with body key 'body-key' answers 409 whose description "
                      "does not say 'request url'",
        pinned_by=("conformance/api/test_secret_metadata.py::test_put_key_mismatch_message_is_complete",),
    ),
    KnownBug(
        id="orders-bypass-quotas",
        title="orders create secrets and containers past the project's secrets/containers quota",
        cause="only POST /v1/secrets and /v1/containers enforce the secrets/containers quotas; an order's "
              "generated secret (key) or container (asymmetric) is created without a quota check, so a project "
              "whose secrets (containers) quota is 0 still gets new secrets (containers) through orders",
        present_means="with the writer's project quota secrets=0 (a direct POST /v1/secrets is 403), a key "
                      "order still ends ACTIVE with a new secret",
        conditions="project quotas in use",
        pinned_by=("conformance/api/test_quotas.py::test_orders_respect_secret_and_container_quotas",),
    ),
    KnownBug(
        id="order-unsupported-generation-500",
        title="an order the backend cannot generate ends in ERROR 500 instead of a 4xx",
        cause="a generation request the backend cannot serve is a client error, but the crypto plugin manager "
              "raises CryptoPluginUnsupportedOperation (or the plugin NotImplementedError), which is not a "
              "BarbicanHTTPException, so api.generate_safe_exception_message maps it to 500 'failure seen - "
              "please contact site administrator' (other unsupported requests get 400)",
        present_means="an order for rsa-3072, aes-512 or hmacsha512-512 ends ERROR with error_status_code 500",
        conditions="the default store cannot generate one of the specs tried (simple_crypto, pkcs11 and kmip "
                   "all have such specs: see conformance/capabilities.yaml)",
        pinned_by=("conformance/api/test_orders.py::test_order_never_fails_with_server_error "
                   "(outcomes marked `bug:` in conformance/capabilities.yaml)",),
    ),
    KnownBug(
        id="kmip-shared-client-threads",
        title="KMIP store: concurrent reads on a threaded API process fail with 500",
        cause="KMIPSecretStore shares one PyKMIP ProxyKmipClient (one TLS connection) between the threads of an "
              "API process; concurrent secret reads interleave on that connection and fail with 500 (log: "
              "ssl.SSLError WRONG_VERSION_NUMBER, 'Bad file descriptor', \"'NoneType' object has no attribute "
              "'close'\")",
        present_means="40 concurrent payload reads (8 threads, 4 probe secrets) include a 500",
        conditions="default store on kmip (targets file `backends: [kmip, ...]`), API processes with threads > 1",
        pinned_by=("tests/test_kmip_threads.py::test_concurrent_kmip_reads_on_a_threaded_node_all_succeed",),
    ),
    KnownBug(
        id="vault-no-relogin-after-403",
        title="vault store: after its Vault token is revoked Barbican stays down until the token's TTL ends",
        cause="castellan's VaultKeyManager (5.8.0, Barbican's vault_plugin) caches its AppRole token until the "
              "token's lease_duration has passed and treats Vault's 403 as final: it never logs in again, so a "
              "revoked token keeps every vault secret at 500 (castellan Forbidden) although the AppRole "
              "credentials are valid; only a restart of the API processes helps before the TTL",
        present_means="with Barbican's tokens revoked (`sys/leases/revoke-prefix/auth/approle/login`), a store "
                      "still answers 500 15 s later",
        conditions="vault secret store with AppRole authentication",
        code_in=(),
        not_checkable="needs Vault's operator to revoke Barbican's token; Barbican's API cannot do it",
        pinned_by=("tests/test_vault.py::test_barbican_logs_in_again_after_its_token_is_revoked",),
    ),
    KnownBug(
        id="vault-write-404-is-success",
        title="vault store: a secret stored while the KV mount is gone answers 201 and is lost",
        cause="castellan's VaultKeyManager (5.8.0) raises only on 403 and 5xx answers: the 404 Vault gives a "
              "write to a path with no mount (KV mount disabled) is taken for success, so Barbican records a "
              "secret whose payload was never stored; it answers 500 for ever, even after the mount's data is "
              "restored",
        present_means="with Barbican's KV mount disabled, POST /v1/secrets answers 201 and the secret is never "
                      "readable",
        conditions="vault secret store whose policy covers the mount's paths",
        code_in=(),
        not_checkable="needs Vault's operator to disable the mount (destructive)",
        pinned_by=("tests/test_vault.py::"
                   "test_a_store_barbican_acknowledges_while_the_mount_is_disabled_is_readable_after_heal",),
    ),
    KnownBug(
        id="vault-login-storm-lockout",
        title="vault store: an expired AppRole secret_id locks Barbican out of Vault for 15 minutes after the fix",
        cause="castellan's VaultKeyManager (5.8.0) logs in again at every request, with no backoff, while its "
              "secret_id is invalid; after 5 failed logins OpenBao's (and Vault's) user lockout refuses the "
              "role_id for 15 minutes, so the outage outlasts the re-issued secret_id (operators must unlock "
              "it with sys/locked-users/.../unlock)",
        present_means="after a few requests with an invalid secret_id and its re-issue, stores still answer "
                      "500 (castellan Forbidden) 15 s later",
        conditions="vault secret store with AppRole authentication, OpenBao 2.x or Vault >= 1.13",
        code_in=(),
        not_checkable="needs Vault's operator to invalidate Barbican's secret_id",
        pinned_by=("tests/test_vault.py::test_barbican_works_again_once_its_secret_id_is_valid_again",),
    ),
    KnownBug(
        id="vault-kv2-soft-delete",
        title="vault store: a deleted secret's payload stays in Vault (KV v2 soft delete)",
        cause="castellan's VaultKeyManager (5.8.0) deletes `<mount>/data/<id>`, which on a KV v2 mount only "
              "marks the latest version deleted: the payload stays in Vault's storage and `kv undelete` brings "
              "it back byte-identical after Barbican reported the secret deleted (no destroy, no metadata "
              "delete)",
        present_means="after DELETE /v1/secrets/{id}, `POST <mount>/undelete/<key_id>` restores the payload",
        conditions="vault secret store on a KV v2 mount (Barbican's default kv_version)",
        code_in=(),
        not_checkable="needs read access to Barbican's KV mount in Vault",
        pinned_by=("tests/test_vault.py::test_a_deleted_secret_leaves_nothing_in_vault",),
    ),
    KnownBug(
        id="db-outage-secret-get-no-response",
        title="with the database unreachable, GET /v1/secrets/{id} gets no HTTP response",
        cause="with the database unreachable, GET /v1/secrets/{id} fails inside SecretsController._lookup (pecan "
              "routing, outside Barbican's exception handler): the DBConnectionError escapes the WSGI app and "
              "the client gets no HTTP response at all (connection closed; uWSGI logs 'HTTP/1.1 500, 0 "
              "headers') instead of a JSON 500",
        present_means="during a database outage a secret GET gets no response instead of a JSON 500",
        not_checkable="needs a database outage, which is destructive: reproduce it on a harness environment "
                      "(tests/test_faults.py, or `fault inject db_outage`), never on a live cloud",
        pinned_by=("tests/test_faults.py::test_db_outage_secret_get_answers_a_json_500",),
    ),
    KnownBug(
        id="p11-reinit-token-absent-attributeerror",
        title="PKCS#11: a token removed during re-initialisation is logged as AttributeError 'slot_id'",
        cause="when re-initialisation meets CKR_TOKEN_NOT_PRESENT from C_GetTokenInfo (token removed between "
              "C_GetSlotList and C_GetTokenInfo), PKCS11._check_error builds "
              "P11CryptoTokenException(slot_id=self.slot_id) before slot_id is set, so the operator sees "
              "AttributeError: 'PKCS11' object has no attribute 'slot_id' instead of 'No token was found'",
        present_means="the service log shows AttributeError 'slot_id' instead of 'No token was found in slot'",
        conditions="p11_crypto store, the HSM token disappears",
        not_checkable="needs the HSM token removed and the service logs; neither is reachable through the API",
        pinned_by=("tests/test_faults.py::test_token_absent_during_reinit_is_reported_as_token_absent",),
    ),
    KnownBug(
        id="postgresql-bytes-in-text-columns",
        title="on PostgreSQL every simple_crypto secret fails (bytes stored in Text columns)",
        cause="SimpleCryptoPlugin.bind_kek_metadata stores Fernet.encrypt()'s bytes in kek_data.plugin_meta, a "
              "Text column (store_crypto does the same with base64.b64encode() bytes for "
              "encrypted_data.cypher_text); PostgreSQL drivers send bytes as bytea and the column gets its "
              "'\\x...' hex text, so every secret then fails with InvalidToken (MariaDB and sqlite happen to "
              "store the same characters)",
        present_means="on a PostgreSQL database, storing or reading any secret answers 500 (InvalidToken)",
        conditions="PostgreSQL database, simple_crypto (or any store_crypto) store",
        not_checkable="the API does not say which database Barbican uses; the bug is in the code on every "
                      "database, and only PostgreSQL turns it into 500s (tests/test_barbican_text_columns.py "
                      "shows it on Barbican's own code)",
        pinned_by=("tests/test_barbican_text_columns.py::test_project_kek_metadata_is_text_for_a_text_column",),
    ),
    # The p11_crypto plugin's bugs that `qualify-hsm` found on real modules. They need a PKCS#11
    # module in Barbican's process, which no API call reaches; harness/qualify/barbican_bugs.py
    # reproduces each with Barbican's own plugin class on a freshly provisioned token.
    KnownBug(
        id="function-list-only",
        title="Barbican's p11_crypto plugin cannot load a module that exports only C_GetFunctionList",
        cause="Barbican's cffi binding looks every C_* function up by exported symbol (ffi.dlopen + "
              "lib.C_Initialize) instead of C_GetFunctionList, so it cannot load a module that exports only "
              "its function list (Kryoptic 1.5.4, NSS softoken): AttributeError at start-up",
        present_means="PKCS11() raises AttributeError on Kryoptic 1.5.4",
        conditions="p11_crypto with a module exporting only its function list (Kryoptic, NSS softoken)",
        not_checkable=_P11_NOT_CHECKABLE,
        pinned_by=("tests/test_barbican_p11_plugin.py::test_barbican_p11_plugin",),
    ),
    KnownBug(
        id="unwrap-template-extractable",
        title="project KEKs cannot be unwrapped on opencryptoki (CKA_EXTRACTABLE in the unwrap template)",
        cause="Barbican hard-codes CKA_EXTRACTABLE=True in C_UnwrapKey's template (pkcs11.py unwrap_key), which "
              "an unwrapped project KEK never needs; opencryptoki 3.8's soft token refuses to set it at unwrap "
              "(CKR_ATTRIBUTE_READ_ONLY) and no [p11_crypto_plugin] option removes it, so every project KEK "
              "cache miss (another node, after pkek_cache_ttl, after a restart) fails",
        present_means="Barbican's unwrap_key fails on opencryptoki while the same unwrap without "
                      "CKA_EXTRACTABLE succeeds",
        conditions="p11_crypto on opencryptoki's soft token (and any module that treats CKA_EXTRACTABLE as "
                   "read-only at unwrap)",
        not_checkable=_P11_NOT_CHECKABLE,
        pinned_by=("tests/test_barbican_p11_plugin.py::test_barbican_p11_plugin",),
    ),
    KnownBug(
        id="default-hmac-key-type",
        title="the default hmac_key_type (CKK_AES) does not sign with the default CKM_SHA256_HMAC",
        cause="Barbican's default hmac_key_type = CKK_AES does not work with its default hmac_mechanism = "
              "CKM_SHA256_HMAC, which takes generic-secret keys (PKCS#11 2.40 section 2.20): C_SignInit "
              "answers CKR_KEY_TYPE_INCONSISTENT on SoftHSM, opencryptoki and Kryoptic alike",
        present_means="with the default HMAC options, C_SignInit answers CKR_KEY_TYPE_INCONSISTENT",
        conditions="p11_crypto with the default hmac options",
        not_checkable=_P11_NOT_CHECKABLE,
        pinned_by=("tests/test_barbican_p11_plugin.py::test_barbican_p11_plugin",),
    ),
    KnownBug(
        id="gcm-16-byte-iv-unpadding",
        title="p11_crypto GCM decrypt silently shortens some secrets stored with a 16-byte IV",
        cause="PKCS11._VENDOR_SAFENET_CKM_AES_GCM_decrypt strips anything that looks like PKCS#7 padding from "
              "the plaintext whenever the stored IV is 16 bytes (meant for secrets of old releases). With "
              "aes_gcm_generate_iv = False the HSM-generated IV is 16 bytes, so a secret whose length is a "
              "multiple of 16 and which ends in 0x01 (1 in 256 random keys), 0x02 0x02, ... is silently shortened",
        present_means="a 32-byte secret ending in 0x01, encrypted with a 16-byte IV, decrypts to 31 bytes",
        conditions="p11_crypto with CKM_AES_GCM and aes_gcm_generate_iv = False",
        not_checkable=_P11_NOT_CHECKABLE,
        pinned_by=("tests/test_barbican_p11_plugin.py::test_barbican_p11_plugin",),
    ),
)

CATALOGUE: dict[str, KnownBug] = {b.id: b for b in BUGS}


def get(bug_id: str) -> KnownBug:
    try:
        return CATALOGUE[bug_id]
    except KeyError:
        raise KeyError(f"no known bug '{bug_id}' in harness/known_bugs/catalogue.py; "
                       f"known: {', '.join(CATALOGUE)}") from None


def known_bug(bug_id: str, raises: type[BaseException] | None = None):
    """The strict-xfail mark of a catalogued bug: its reason is the catalogue's. `raises`
    narrows the expected failure (a reproduction that cannot run must fail, not xfail)."""
    import pytest

    return pytest.mark.xfail(strict=True, raises=raises, reason=get(bug_id).xfail_reason)
