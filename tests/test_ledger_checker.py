"""The integrity ledger's checker can fail: each way a secret store can betray its users
is made for real on a live environment (behind the ledger's back, through the API or the
database, as a bug or an operator would) and the checker must name exactly those refs."""

from __future__ import annotations

import secrets as _rand

import pytest

from harness.ledger import Ledger, LedgerChecker

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("simple-crypto")]


def _id(ref: str) -> str:
    return ref.rstrip("/").rsplit("/", 1)[1]


def test_checker_names_lost_corrupted_resurrected_and_unexpected_secrets(env_of, tmp_path):
    env = env_of("simple-crypto")
    role, node = env.writer_role, "barbican-1"
    client = env.barbican(role, node=node)
    ledger = Ledger(tmp_path / "ledger")
    payloads = {k: _rand.token_bytes(24) for k in ("kept", "lost", "corrupted", "donor", "resurrected")}
    refs = {k: ledger.store(client, role, node, p) for k, p in payloads.items()}
    assert all(refs.values())
    clean = LedgerChecker(ledger, env, node).check()
    assert clean.ok and clean.verified == 5 and clean.acknowledged == 5

    # lost: deleted behind the ledger's back
    client.secrets.delete(refs["lost"])
    # corrupted: another secret's ciphertext under this one (same project, same KEK)
    with env.provider.database.connect("barbican") as conn, conn.cursor() as cur:
        cur.execute("UPDATE encrypted_data dst JOIN encrypted_data src ON src.secret_id = %s "
                    "SET dst.cypher_text = src.cypher_text, dst.kek_id = src.kek_id WHERE dst.secret_id = %s",
                    (_id(refs["donor"]), _id(refs["corrupted"])))
        conn.commit()
    # resurrected: an acknowledged delete undone in the database
    client.secrets.delete(refs["resurrected"])
    ledger.deleted(ledger.entries()[-1].name, refs["resurrected"], role, node, "ok")
    with env.provider.database.connect("barbican") as conn, conn.cursor() as cur:
        cur.execute("UPDATE secrets SET deleted = 0, deleted_at = NULL, status = 'ACTIVE' WHERE id = %s",
                    (_id(refs["resurrected"]),))
        conn.commit()
    # unexpected: a refused create that exists after all, and a secret nobody recorded
    refused = ledger.new_name()
    ledger.created(refused, b"x" * 8, role, node, "failed", error="HTTP 500")
    refused_ref = client.secrets.create(name=refused, payload=b"x" * 8).store()
    stray_ref = client.secrets.create(name=ledger.new_name(), payload=b"y" * 8).store()
    # unknown: a timed-out create that never happened is fine
    ledger.created(ledger.new_name(), b"z" * 8, role, node, "unknown", error="ReadTimeout")

    try:
        result = LedgerChecker(ledger, env, node).check()
        assert not result.ok
        assert result.lost == [refs["lost"]]
        assert result.corrupted == [refs["corrupted"]]
        assert result.resurrected == [refs["resurrected"]]
        assert sorted(result.unexpected) == sorted([refused_ref, stray_ref])
        assert result.unknown_missing == 1
        assert result.verified == 2  # kept and donor
    finally:
        for ref in (refs["kept"], refs["corrupted"], refs["donor"], refs["resurrected"], refused_ref, stray_ref):
            env.session(role).delete(ref, raise_exc=False, timeout=15)
