"""The upgrade gate: does Barbican keep every secret readable, and keep serving, along an
upgrade path between any two builds (releases, wheels, sdists, git commits)?

    barbican-harness upgrade-gate --from 22.0.0 --to git:../barbican [--rolling] [--env X.yaml]

Rooms:
  gate.py           the gate itself: builds, FROM up, seed, hop by hop, verify, conformance
  rolling.py        a hop as a rolling upgrade under load, phase by phase
  kek.py            simple_crypto KEK continuity across a hop (the 2025.2 trap)
  secret_checks.py  the gate's secrets: seeded on every store, read through every node
  evidence.py       what Barbican's database and logs say (plugins, schema, exceptions)
  report.py         the gate's report (upgrade-gate.json / .txt)
  command.py        the `upgrade-gate` command's body
The builds themselves (venvs, images, pins) are harness.builds.
"""
