"""Helpers of the locustfile that do not need Locust: configuration, Keystone tokens,
refs across nodes. Imported only inside Locust processes (the locustfile's directory is
on sys.path there); tests and harness modules never import this file.

The configuration comes from the JSON file named by $BARBICAN_LOAD_CONFIG (mode 0600,
written by harness.load_driver.driver): keystone url, node urls, credentials per role, ledger
and series directories, weights, seed, fixtures.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

CONFIG_ENV = "BARBICAN_LOAD_CONFIG"


@dataclass(frozen=True)
class Node:
    name: str
    url: str


class LoadConfig:
    def __init__(self, data: dict):
        self.data = data
        self.keystone_url: str = data["keystone_url"].rstrip("/")
        self.nodes = [Node(n["name"], n["url"].rstrip("/")) for n in data["nodes"]]
        self.credentials: dict[str, dict] = data["credentials"]
        self.roles: dict[str, str] = data["roles"]
        self.weights: dict[str, float] = data.get("weights", {})
        self.seed = data.get("seed", 0)
        self.wait = tuple(data.get("wait", (0.1, 0.5)))
        self.timeout = float(data.get("timeout", 15))
        self.refresh_margin = float(data.get("token_refresh_margin_s", 300))
        self.consumer_probability = float(data.get("consumer_probability", 0.2))
        self.order_poll_timeout = float(data.get("order_poll_timeout_s", 20))
        self.delete_retry_s = float(data.get("delete_retry_s", 30))
        self.keepalive = bool(data.get("keepalive", False))
        self.fixtures = data.get("fixtures", {"containers": [], "luks_keys": []})
        self.ledger_dir = data["ledger_dir"]
        self.series_dir = data["series_dir"]
        self.started_file = data.get("started_file")
        self.run_time = float(data.get("run_time") or 0)
        self.stretch_file = data.get("stretch_file")  # seconds to run longer (harness.load_driver)
        self.max_stretch = float(data.get("max_stretch") or 0)
        self.rotation = Rotation(data.get("rotation_file"), self.nodes)

    @classmethod
    def from_env(cls) -> "LoadConfig":
        path = os.environ.get(CONFIG_ENV)
        if not path:
            raise SystemExit(f"${CONFIG_ENV} is not set: the locustfile is started by harness.load_driver.driver "
                             f"(barbican-harness load), which writes its configuration")
        with open(path) as f:
            return cls(json.load(f))

    def node_by_url(self, url: str) -> Node | None:
        for n in self.nodes:
            if url.startswith(n.url + "/") or url == n.url:
                return n
        return None


class Rotation:
    """The nodes in rotation (harness.load_driver.rotation): every node but those the file names;
    the file is re-read when it changes (one stat per request)."""

    def __init__(self, path: str | None, nodes: list[Node]):
        self.path, self.nodes = path, nodes
        self._stamp: int | None = None
        self.serving = list(nodes)

    def current(self) -> list[Node]:
        if not self.path:
            return self.nodes
        try:
            stamp = os.stat(self.path).st_mtime_ns
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self._stamp = stamp
            out: set[str] = set()
            if stamp is not None:
                try:
                    with open(self.path) as f:
                        out = set(json.load(f).get("out", []))
                except (OSError, ValueError):
                    return self.serving  # mid-replace: keep the last set
            # A load balancer with every backend out still sends somewhere: all of them.
            self.serving = [n for n in self.nodes if n.name not in out] or list(self.nodes)
        return self.serving


def on_node(ref: str, node: Node) -> str:
    """The same resource through another API node: refs carry the node that served them."""
    _, sep, path = ref.partition("/v1/")
    return f"{node.url}/v1/{path}" if sep else ref


def uuid_of(ref: str) -> str:
    return ref.rstrip("/").rsplit("/", 1)[-1]


@dataclass
class Token:
    value: str
    expires: float  # epoch seconds
    user_id: str
    project_id: str


def _parse_expiry(text: str) -> float:
    text = text.replace("Z", "+00:00")
    return dt.datetime.fromisoformat(text).timestamp()


class TokenCache:
    """One Keystone token per role per process, refreshed `margin` seconds before it
    expires (or when Barbican answers 401), as keystoneauth does for a service.

    `post(url, body) -> (status, headers, json)` is the HTTP call, injected by the
    locustfile so the token requests show up in Locust's statistics."""

    def __init__(self, cfg: LoadConfig):
        self.cfg = cfg
        self._tokens: dict[str, Token] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.fetched = 0

    def _lock(self, role: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(role, threading.Lock())

    def _fresh(self, tok: Token | None) -> bool:
        if tok is None:
            return False
        lifetime_margin = self.cfg.refresh_margin
        return time.time() < tok.expires - lifetime_margin

    def get(self, role: str, post: Callable[[str, dict], tuple[int, dict, dict | None]]) -> Token | None:
        tok = self._tokens.get(role)
        if self._fresh(tok):
            return tok
        with self._lock(role):  # one fetch per role at a time; the others wait for it
            tok = self._tokens.get(role)
            if self._fresh(tok):
                return tok
            cred = self.cfg.credentials[role]
            body = {"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": cred["username"], "domain": {"name": cred.get("domain", "Default")},
                    "password": cred["password"]}}},
                "scope": {"project": {"name": cred["project"], "domain": {"name": cred.get("domain", "Default")}}}}}
            status, headers, data = post(self.cfg.keystone_url + "/auth/tokens", body)
            if status != 201 or not data:
                return None
            value = headers.get("X-Subject-Token") or headers.get("x-subject-token")
            if not value:
                return None
            t = data["token"]
            tok = Token(value, _parse_expiry(t["expires_at"]), t["user"]["id"], t["project"]["id"])
            self._tokens[role] = tok
            self.fetched += 1
            return tok

    def invalidate(self, role: str, value: str) -> None:
        tok = self._tokens.get(role)
        if tok is not None and tok.value == value:
            self._tokens.pop(role, None)
