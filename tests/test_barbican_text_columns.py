"""Why Barbican 23 breaks on PostgreSQL (the question issue 2 asked), shown on Barbican's
own code without a PostgreSQL server.

Barbican's simple_crypto plugin hands the database *bytes* for columns declared sa.Text:
the wrapped project KEK (kek_data.plugin_meta, a Fernet token) and, in store_crypto, the
base64 ciphertext (encrypted_data.cypher_text). PyMySQL and sqlite store bytes in a text
column as the same characters, so MariaDB works. psycopg2 and psycopg 3 adapt bytes as
bytea, and PostgreSQL casts bytea to text as its hex escape ('\\x6741...'): the row then
holds another string, and reading it back fails with InvalidToken (the 500s measured with
both drivers). A Barbican bug, not a driver one: a Text column must be given str."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from barbican.model import models
from barbican.plugin.crypto import base, simple_crypto

from harness.known_bugs import known_bug


@pytest.fixture
def plugin():
    conf = simple_crypto.CONF
    conf([], project="barbican", default_config_files=[])
    conf.set_override("kek", [Fernet.generate_key().decode()], group="simple_crypto_plugin")
    try:
        yield simple_crypto.SimpleCryptoPlugin(conf)
    finally:
        conf.clear_override("kek", group="simple_crypto_plugin")
        conf.reset()


def test_the_columns_are_text():
    assert isinstance(models.KEKDatum.__table__.c.plugin_meta.type, models.sa.Text)
    assert isinstance(models.EncryptedDatum.__table__.c.cypher_text.type, models.sa.Text)


@known_bug("postgresql-bytes-in-text-columns")
def test_project_kek_metadata_is_text_for_a_text_column(plugin):
    dto = plugin.bind_kek_metadata(base.KEKMetaDTO(models.KEKDatum()))
    assert isinstance(dto.plugin_meta, str)
