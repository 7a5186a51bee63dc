"""Every `harness.*` module the code names exists. Many imports are lazy (inside functions,
to keep start-up fast and Locust's gevent out of pytest), so a renamed module would only
fail when that command runs; this reads the sources instead (pure logic, no services)."""

from __future__ import annotations

import ast
import importlib.util

from tests.conftest import REPO


def _named_modules():
    for folder in ("harness", "tests", "conformance", "bench", "load"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                for name in names:
                    if name == "harness" or name.startswith("harness."):
                        yield path.relative_to(REPO), node.lineno, name


def test_every_harness_module_named_in_an_import_exists():
    missing = sorted({(str(path), line, name) for path, line, name in _named_modules()
                      if importlib.util.find_spec(name) is None})
    assert not missing, "\n".join(f"{p}:{line}: no module {name}" for p, line, name in missing)
