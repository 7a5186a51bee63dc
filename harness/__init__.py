"""Barbican chaos & conformance harness.

Stands up real Barbican environments (Keystone, N Barbican API nodes, a database,
SoftHSM, a worker, a KMIP server), injects faults, and reports how Barbican behaved.
"""

__version__ = "0.1.0"
