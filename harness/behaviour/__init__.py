"""Behaviour under faults: what Barbican did, round by round, and how two builds differ.

Rooms:
  signature.py  per scenario run, every probe round as data (behaviour.json in the run dir):
                per node and operation the status, the normalised error message, answered
                or not, a latency bucket, the log signatures seen; recovery after heal
  noise.py      phase-level summaries (before / during / after the fault) that leave out
                run-to-run jitter (which node answered first, how many rounds ran)
  diff.py       two sets of runs lined up scenario by scenario and phase by phase; every
                difference with its meaning; accepted differences (--accept FILE)
"""
