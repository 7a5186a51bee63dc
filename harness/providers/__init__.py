"""Environment providers: how an environment's services run. Every list of providers
(topology and scenario validation, CLI help, the campaign, the pytest options, the
benches) derives from PROVIDERS below.

  local   processes of this machine (the default)
  docker  one container per service on a private Docker network

Both sit behind harness.environment.Environment, share their start order
(harness.providers.sequence) and offer the same facets (harness.providers.facets).
Providers are imported on demand: the Docker SDK is not needed for local runs.
"""

from __future__ import annotations

import importlib

from harness.errors import HarnessError

# name -> "module:class"
PROVIDERS: dict[str, str] = {
    "local": "harness.providers.local:LocalProvider",
    "docker": "harness.providers.docker:DockerProvider",
}
DEFAULT_PROVIDER = "local"


def provider_names() -> tuple[str, ...]:
    return tuple(PROVIDERS)


def check_provider(name: str) -> str:
    if name not in PROVIDERS:
        raise HarnessError(f"unknown provider '{name}'; providers: {', '.join(PROVIDERS)}")
    return name


def provider_class(name: str):
    module, cls = PROVIDERS[check_provider(name)].split(":")
    return getattr(importlib.import_module(module), cls)
