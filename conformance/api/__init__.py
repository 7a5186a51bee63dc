"""Barbican v1 API conformance suite (see conformance/COVERAGE.md).

Tests take the ``target``-bound fixtures of conformance/conftest.py (``http``, ``res``, ``caps``,
``uname``) and label themselves for Allure with ``labels(feature, story, severity)``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import allure
import yaml

EPIC = "Barbican API"
CAPABILITIES_FILE = Path(__file__).resolve().parent.parent / "capabilities.yaml"

BLOCKER = allure.severity_level.BLOCKER
CRITICAL = allure.severity_level.CRITICAL
NORMAL = allure.severity_level.NORMAL
MINOR = allure.severity_level.MINOR


def labels(feature: str, story: str, severity=NORMAL):
    """allure.epic/feature/story/severity in one decorator."""

    def wrap(fn):
        for deco in (allure.epic(EPIC), allure.feature(feature), allure.story(story), allure.severity(severity)):
            fn = deco(fn)
        return fn

    return wrap


@lru_cache(maxsize=1)
def capabilities() -> dict:
    """conformance/capabilities.yaml, for collection-time parametrization (spec ids)."""
    return yaml.safe_load(CAPABILITIES_FILE.read_text())
