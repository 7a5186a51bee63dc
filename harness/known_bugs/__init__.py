"""Known Barbican bugs: one catalogue (catalogue.py) that the suites' strict xfails and the
`barbican-harness known-bugs` command share; API probes for the ones a live Barbican can
show (probes.py); the command's run (run.py)."""

from harness.known_bugs.catalogue import BUGS, CATALOGUE, KnownBug, known_bug

__all__ = ["BUGS", "CATALOGUE", "KnownBug", "known_bug"]
