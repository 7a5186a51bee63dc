"""Issue 13, pure logic: the deployment file's validation (one line per bad field, naming
the allowed values) and barbican.conf edits that change only what a fault means."""

from __future__ import annotations

import pytest
import yaml

from harness.deployment.ini import apply_overrides, option
from harness.deployment.spec import Deployment
from harness.errors import HarnessError

CONF = """# Kolla-generated
[DEFAULT]
debug = False
host_href = http://ctl1:9311

[simple_crypto_plugin]
# the master KEK
kek = old-one
kek = older-one
    continued

[p11_crypto_plugin]
library_path = /usr/lib/vendor/libpkcs11.so
login = 1234

[queue]
enable = False
"""


def write(tmp_path, spec: dict):
    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def minimal(**extra) -> dict:
    return {"api": {"cloud": "staging"}, "nodes": {"barbican-1": {"container": "barbican_api",
                                                               "url": "http://ctl1:9311"}}, **extra}


def test_a_minimal_file_gets_kolla_defaults(tmp_path):
    d = Deployment.load(write(tmp_path, minimal()))
    assert d.name == "deployment"  # the file's stem
    assert d.config_path("barbican-1") == "/etc/barbican/barbican.conf" and d.log("barbican-1") == "stdout"
    assert d.docker_host(d.spec.nodes["barbican-1"]) == "unix:///var/run/docker.sock"


@pytest.mark.parametrize("patch, field, allowed", [
    ({"defaults": {"docker_host": "docker.example:2375"}}, "defaults.docker_host", "unix://..., tcp://..., ssh://..."),
    ({"defaults": {"log": "api.log"}}, "defaults.log", "'stdout'"),
    ({"defaults": {"config": "barbican.conf"}}, "defaults.config", "absolute path"),
    ({"nodes": {"barbican-1": {"container": "barbican_api", "url": "ctl1:9311"}}}, "nodes.barbican-1.url",
     "http(s)://host:port"),
    ({"nodes": {"barbican-1": {"container": "barbican_api", "url": "http://a:1", "colour": "red"}}},
     "nodes.barbican-1.colour", "allowed: config, container, docker_host, log, pkcs11_module, url"),
    ({"workers": {"barbican-1": {"container": "w"}}}, "(top level)", "both as a node and as a worker"),
])
def test_bad_fields_are_named_with_what_is_allowed(tmp_path, patch, field, allowed):
    path = write(tmp_path, {**minimal(), **patch})
    with pytest.raises(HarnessError) as exc:
        Deployment.load(path)
    text = str(exc.value)
    assert text.startswith(str(path)) and f"field '{field}'" in text and allowed in text, text


def test_a_kek_override_replaces_every_kek_line_and_nothing_else():
    out = apply_overrides(CONF, {"keks": ["new"]})
    assert option(out, "simple_crypto_plugin", "kek") == ["new"]
    assert "continued" not in out  # the continuation belonged to the replaced value
    assert out.replace("kek = new\n", "") == CONF.replace("kek = old-one\nkek = older-one\n    continued\n", "")
    assert apply_overrides(CONF, {}) == CONF


def test_p11_options_are_merged_and_a_store_switch_writes_its_sections():
    out = apply_overrides(CONF, {"p11": {"login": "9999", "mkek_label": "other"},
                                 "single_store_crypto": ["p11_crypto"], "debug": True})
    assert option(out, "p11_crypto_plugin", "login") == ["9999"]
    assert option(out, "p11_crypto_plugin", "library_path") == ["/usr/lib/vendor/libpkcs11.so"]
    assert option(out, "p11_crypto_plugin", "mkek_label") == ["other"]
    assert option(out, "crypto", "enabled_crypto_plugins") == ["p11_crypto"]
    assert option(out, "secretstore", "enabled_secretstore_plugins") == ["store_crypto"]
    assert option(out, "DEFAULT", "debug") == ["True"] and out.startswith("# Kolla-generated\n[DEFAULT]\n")
    with pytest.raises(HarnessError, match="known: keks, p11"):
        apply_overrides(CONF, {"kek": "x"})
