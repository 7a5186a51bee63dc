"""simple_crypto master-KEK incidents and the crypto-plugin switch."""

from __future__ import annotations

from typing import Any

from harness.context import fernet_key
from harness.faults.base import Fault, FaultError, Params, kept_configs, node_name
from harness.target import Capability, Traits

CONFIG = Capability.CONFIG_WRITE


class NodeParams(Params):
    node: str = "1"


class KekMismatch(Fault):
    """Per-node KEK mismatch: one API node restarted with a different simple_crypto KEK.

    Barbican keeps one project KEK per project, Fernet-wrapped with the master KEK of
    whichever node created it first. On the odd node every project that already has a
    pKEK gets 500 "... failure seen - please contact site administrator" for store and
    retrieve (InvalidToken in its log); new projects still work there.
    """

    name = "kek_mismatch"
    Params = NodeParams
    capabilities = frozenset({Capability.API, CONFIG})
    backend = "simple_crypto"

    def prepare(self, env) -> dict[str, Any]:
        node = node_name(env, self.params.node)
        return {"node": node, **kept_configs(env, [node])}

    def inject(self, env, undo: dict[str, Any]) -> None:
        # A fresh KEK nobody else has; kept in memory and the node's 0600 config only.
        env.facet(CONFIG).restart_with(undo["node"], {"keks": [fernet_key()]})

    def heal(self, env, undo: dict[str, Any]) -> None:
        env.facet(CONFIG).restart_with(undo["node"], {})


class KekRotationWithoutRewrap(Fault):
    """KEK rotated without re-wrapping: every node gets a new KEK and the old one is dropped.

    Every existing project's pKEK was wrapped with the old KEK: all existing secrets and
    all stores into existing projects fail with 500 on every node; only new projects work.
    The documented rotation (new key first, old kept, rewrap_pkek, old removed) is
    harness.operations.rotate_simple_crypto_kek and loses nothing.
    """

    name = "kek_rotation_without_rewrap"
    capabilities = frozenset({Capability.API, CONFIG})
    backend = "simple_crypto"

    def prepare(self, env) -> dict[str, Any]:
        nodes = [n.name for n in env.nodes]
        return {"nodes": nodes, **kept_configs(env, nodes)}

    def inject(self, env, undo: dict[str, Any]) -> None:
        new = fernet_key()
        for node in undo["nodes"]:
            env.facet(CONFIG).restart_with(node, {"keks": [new]})

    def heal(self, env, undo: dict[str, Any]) -> None:
        for node in undo["nodes"]:
            env.facet(CONFIG).restart_with(node, {})


# Store backends that are crypto plugins of store_crypto, by the plugin's name.
CRYPTO_PLUGINS = {"simple_crypto": "simple_crypto", "pkcs11": "p11_crypto"}


class PluginParams(Params):
    plugin: str = "simple_crypto"


class CryptoPluginRemoved(Fault):
    """Crypto plugin removed: the plugin that wrote existing secrets is dropped from
    enabled_crypto_plugins (e.g. while switching simple_crypto → p11_crypto).

    Existing secrets of the removed plugin fail with 500 (CryptoPluginUnsupportedOperation
    in the log); new secrets go to the remaining plugin and work. Needs a topology with both
    plugins configured (multi-store)."""

    name = "crypto_plugin_removed"
    Params = PluginParams
    capabilities = frozenset({Capability.API, CONFIG})

    def check(self, traits: Traits) -> None:
        super().check(traits)
        configured = [CRYPTO_PLUGINS[b] for b in traits.backends if b in CRYPTO_PLUGINS]
        if self.params.plugin not in configured or len(configured) < 2:
            raise FaultError(f"fault 'crypto_plugin_removed' needs a target with crypto plugin "
                             f"'{self.params.plugin}' and another one; {traits.name} has {configured}")

    def prepare(self, env) -> dict[str, Any]:
        remaining = [CRYPTO_PLUGINS[b] for b in env.backends
                     if b in CRYPTO_PLUGINS and CRYPTO_PLUGINS[b] != self.params.plugin]
        nodes = [n.name for n in env.nodes]
        return {"nodes": nodes, "remaining": remaining, **kept_configs(env, nodes)}

    def inject(self, env, undo: dict[str, Any]) -> None:
        # One store, on the remaining plugin: what an operator who "switched" backends runs.
        for node in undo["nodes"]:
            env.facet(CONFIG).restart_with(node, {"single_store_crypto": undo["remaining"]})

    def heal(self, env, undo: dict[str, Any]) -> None:
        for node in undo["nodes"]:
            env.facet(CONFIG).restart_with(node, {})
