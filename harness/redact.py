"""Secrets hygiene: every KEK, PIN, password and token the harness creates is registered
here, and every text that leaves the harness (logs it copies, reports, CLI output) goes
through `mask()`."""

from __future__ import annotations

import re
import threading

MASK = "***"
_lock = threading.Lock()
_secrets: set[str] = set()
# X-Auth-Token headers and keystone fernet tokens (gAAAAA...) that appear in service logs.
_TOKEN_RE = re.compile(r"(gAAAAA[A-Za-z0-9_\-=]{20,})")
_HEADER_RE = re.compile(r"(?i)(x-(?:auth|subject)-token['\"]?\s*[:=]\s*['\"]?)([^'\"\s,}]+)")
_KV_RE = re.compile(r"(?im)^(\s*(?:kek|login|password|admin_password|pin|so_pin)\s*=\s*)(\S.*)$")


def register(*values: str) -> None:
    with _lock:
        for v in values:
            if v and len(v) >= 4:
                _secrets.add(v)


def mask(text: str) -> str:
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for value in known:
        if value in text:
            text = text.replace(value, MASK)
    text = _TOKEN_RE.sub(MASK, text)
    text = _HEADER_RE.sub(lambda m: m.group(1) + MASK, text)
    return _KV_RE.sub(lambda m: m.group(1) + MASK, text)
