"""barbican.conf edited the way an operator edits it: only the options a fault changes,
everything else (comments, order, other sections, multi-valued options) left as it was.

configparser cannot do it: it refuses the repeated `kek =` lines oslo.config reads as
one multi-valued option, and it drops comments.

The overrides are what a config fault means (harness.target.ConfigWrite), applied to
the node's original file:

  keks                 list: [simple_crypto_plugin] kek, one line each (the first wraps)
  p11                  dict: merged into [p11_crypto_plugin]
  single_store_crypto  list: one store_crypto store on just these crypto plugins
  debug                bool: [DEFAULT] debug
"""

from __future__ import annotations

import re
from typing import Any

from harness.errors import HarnessError

KNOWN = ("keks", "p11", "single_store_crypto", "debug")

_SECTION = re.compile(r"^\s*\[([^\]]+)\]\s*$")
_OPTION = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*[=:]")


def _text(value: Any) -> str:
    return str(value) if not isinstance(value, bool) else ("True" if value else "False")


class IniFile:
    def __init__(self, text: str):
        self.newline = "\r\n" if "\r\n" in text else "\n"
        self.lines = text.splitlines()
        self.trailing_newline = text.endswith(("\n", "\r"))

    def render(self) -> str:
        return self.newline.join(self.lines) + (self.newline if self.trailing_newline or self.lines else "")

    def _section(self, name: str) -> tuple[int, int] | None:
        """(header line, end) of a section; [DEFAULT] may be implicit at the top."""
        start = None
        for i, line in enumerate(self.lines):
            m = _SECTION.match(line)
            if m:
                if start is not None:
                    return start, i
                if m.group(1).strip() == name:
                    start = i
        if start is not None:
            return start, len(self.lines)
        return None

    def set(self, section: str, key: str, values: list[str]) -> None:
        """Make `key` in `section` exactly these values (one line each), where it was."""
        span = self._section(section)
        if span is None:
            if self.lines and self.lines[-1].strip():
                self.lines.append("")
            self.lines += [f"[{section}]"] + [f"{key} = {v}" for v in values]
            return
        start, end = span
        at, keep = None, []
        i = start + 1
        while i < end:
            m = _OPTION.match(self.lines[i])
            if m and m.group(1) == key and not self.lines[i].lstrip().startswith(("#", ";")):
                at = len(keep) if at is None else at
                i += 1
                while i < end and self.lines[i][:1] in (" ", "\t") and self.lines[i].strip():
                    i += 1  # a continuation line of the value
                continue
            keep.append(self.lines[i])
            i += 1
        if at is None:  # after the section's last option, before trailing blank lines
            at = len(keep)
            while at > 0 and not keep[at - 1].strip():
                at -= 1
        body = keep[:at] + [f"{key} = {v}" for v in values] + keep[at:]
        self.lines[start + 1:end] = body


def apply_overrides(text: str, overrides: dict[str, Any]) -> str:
    unknown = sorted(set(overrides) - set(KNOWN))
    if unknown:
        raise HarnessError(f"config override {unknown} cannot be applied to a barbican.conf; known: {', '.join(KNOWN)}")
    ini = IniFile(text)
    if "keks" in overrides:
        ini.set("simple_crypto_plugin", "kek", [_text(k) for k in overrides["keks"]])
    for key, value in (overrides.get("p11") or {}).items():
        ini.set("p11_crypto_plugin", key, [_text(value)])
    if "single_store_crypto" in overrides:
        ini.set("secretstore", "enable_multiple_secret_stores", ["False"])
        ini.set("secretstore", "enabled_secretstore_plugins", ["store_crypto"])
        ini.set("crypto", "enabled_crypto_plugins", [", ".join(overrides["single_store_crypto"])])
    if "debug" in overrides:
        ini.set("DEFAULT", "debug", [_text(overrides["debug"])])
    return ini.render()


def option(text: str, section: str, key: str) -> list[str]:
    """Every value of `key` in `section` (the way oslo.config reads a multi-valued one)."""
    ini = IniFile(text)
    span = ini._section(section)
    if span is None:
        return []
    out = []
    for line in ini.lines[span[0] + 1:span[1]]:
        m = _OPTION.match(line)
        if m and m.group(1) == key and not line.lstrip().startswith(("#", ";")):
            out.append(line.split("=", 1)[1].strip() if "=" in line else line.split(":", 1)[1].strip())
    return out
