"""Triage: what broke, and is it an outage or a data-loss incident?

Built only from what an operator could observe too: the shared dependencies asked directly
(dependencies.py), canary store+get per node, reads of pre-existing sentinel secrets per
node, the service user reading consumed TLS containers, an expiry audit of consumed secrets
found in the cloud (discovery.py), a Keystone token issue, an order probe, and the
services' logs, read with their time (logwindow.py).
Never /healthcheck alone: it answers 200 with a broken crypto backend."""

from harness.triage.diagnose import Diagnoser, Verdict, diagnose  # noqa: F401
