"""Pure logic of the option search and of the matrix rendering (no module, no service):
the order combinations are tried in, what is pruned without a call and why, which block a
failed search still runs Barbican with, and that every verdict cell written is counted."""

from __future__ import annotations

from harness.qualify.matrix_report import build_sections, render_html, render_markdown
from harness.qualify.search import GROUPS, Attempt, static_prune


def group(name: str):
    return next(g for g in GROUPS if g.name == name)


def test_each_group_tries_barbicans_defaults_first_except_os_locking():
    wrap, enc, hmac, lock = (group(n) for n in ("key wrapping", "secret encryption", "HMAC of wrapped keys",
                                                "concurrency"))
    assert wrap.combos[0] == {"key_wrap_mechanism": "CKM_AES_CBC_PAD", "key_wrap_generate_iv": True,
                              "always_set_cka_sensitive": True}
    assert enc.combos[0] == {"encryption_mechanism": "CKM_AES_CBC", "aes_gcm_generate_iv": True}
    assert hmac.combos[0] == {"hmac_mechanism": "CKM_SHA256_HMAC", "hmac_key_type": "CKK_AES",
                              "hmac_keygen_mechanism": "CKM_AES_KEY_GEN"}
    # a race not seen in a short run proves nothing: the locking value comes first
    assert lock.combos[0] == {"os_locking_ok": True}
    # vendor mechanisms last
    assert enc.combos[-1]["encryption_mechanism"] == "VENDOR_SAFENET_CKM_AES_GCM"
    assert hmac.combos[3]["hmac_keygen_mechanism"] == "CKM_NC_SHA256_HMAC_KEY_GEN"
    assert len(wrap.combos) == 12 and len(hmac.combos) == 18   # the whole product is listed, pruning decides


def test_static_pruning_names_the_reason():
    listed = {"CKM_AES_KEY_GEN", "CKM_AES_CBC", "CKM_AES_CBC_PAD", "CKM_SHA256_HMAC", "CKM_GENERIC_SECRET_KEY_GEN"}
    assert static_prune({"key_wrap_mechanism": "CKM_AES_KEY_WRAP_PAD"}, listed) == \
        "CKM_AES_KEY_WRAP_PAD not in C_GetMechanismList"
    assert static_prune({"key_wrap_mechanism": "CKM_AES_CBC_PAD"}, listed) is None
    assert "makes CKK_GENERIC_SECRET keys, not CKK_AES" in static_prune(
        {"hmac_mechanism": "CKM_SHA256_HMAC", "hmac_key_type": "CKK_AES",
         "hmac_keygen_mechanism": "CKM_GENERIC_SECRET_KEY_GEN"}, listed)
    assert static_prune({"hmac_mechanism": "CKM_AES_MAC", "hmac_key_type": "CKK_GENERIC_SECRET",
                         "hmac_keygen_mechanism": "CKM_GENERIC_SECRET_KEY_GEN"}, listed) == \
        "CKM_AES_MAC signs with AES keys only"
    # without a mechanism list only Barbican's own pairing rules prune
    assert static_prune({"encryption_mechanism": "VENDOR_SAFENET_CKM_AES_GCM"}, None) is None


def test_the_closest_combination_is_the_one_that_got_furthest():
    wrap = group("key wrapping")
    at_wrap = Attempt("key wrapping", {"key_wrap_mechanism": "A"}, "FAIL", requirement="keywrap.wrap")
    at_unwrap = Attempt("key wrapping", {"key_wrap_mechanism": "B"}, "FAIL", requirement="keywrap.unwrap")
    at_keygen = Attempt("key wrapping", {"key_wrap_mechanism": "C"}, "FAIL", requirement="keygen.mkek")
    assert [wrap.progress(a) for a in (at_keygen, at_wrap, at_unwrap)] == [0, 2, 3]
    assert max([at_keygen, at_wrap, at_unwrap], key=wrap.progress) is at_unwrap


def _module(name: str, passed: bool) -> dict:
    reqs = [{"requirement": "keywrap.unwrap", "passed": passed, "detail": "d|x"},
            {"requirement": "mechanism.listed[a=B]", "passed": True, "detail": ""},
            {"requirement": "api.secret.opaque/x", "passed": passed, "detail": ""}]
    return {"module": name, "title": name.upper(), "verdict": "PASS" if passed else "FAIL", "seconds": 1,
            "token": {"label": "t", "init_seconds": 0.1},
            "search": {"probe": {"barbican": {"direct": {"ok": passed, "step": "PKCS11()", "error": "AttributeError"},
                                              "through the shim": {"ok": True}}},
                       "attempts": [{"group": "key wrapping", "options": {"key_wrap_mechanism": "X"}, "result": "FAIL",
                                     "error": "CKR_ATTRIBUTE_READ_ONLY", "requirement": "keywrap.unwrap", "why": "w"}],
                       "block": {"os_locking_ok": "True"} if passed else None,
                       "closest": None if passed else {"os_locking_ok": "True"},
                       "unmet": [] if passed else ["key wrapping: no combination passed"], "tried": 1, "pruned": 0},
            "qualification": {"requirements": reqs, "throughput": [], "hsm_calls_per_operation": {}}}


def test_matrix_renders_one_column_per_module_and_counts_every_verdict_cell():
    matrix = {"run_id": "r", "profile": "short", "seconds": 3, "modules": [_module("a", True), _module("b", False)]}
    sections = build_sections(matrix)
    md, page = render_markdown(sections), render_html(sections, "t")
    req = next(s for s in sections if s.title == "Requirements")
    assert req.table.header == ["requirement", "a", "b"]
    rows = {r[0]: r[1:] for r in req.table.rows}
    assert rows["keywrap.unwrap"] == ["PASS", "FAIL"]
    assert rows["mechanism.listed"] == ["PASS", "PASS"] and rows["api.secrets"] == ["PASS", "FAIL"]
    assert rows["Barbican's code loads it as library_path (C_Initialize, login, gen_mkek)"] == ["PASS", "FAIL"]
    cells = sum(len(s.table.rows) * len(s.table.verdict_columns) for s in sections if s.table)
    assert page.count("data-verdict=") == cells
    assert "| keywrap.unwrap | PASS | FAIL |" in md
    assert "no block passes every check (key wrapping: no combination passed); the closest" in md
