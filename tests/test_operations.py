"""Pure logic of the operator procedures (the procedures themselves run against real
environments in tests/test_faults.py and conformance/scenarios)."""

from __future__ import annotations

from harness.operations import _projects_with_errors

REWRAP_OUTPUT = """Retrieving all available projects
Retrieving KEKs for Project 11111111-aaaa
Retrieving KEKs for Project 22222222-bbbb
Error occurred! SQLAlchemy automatically rolled-back the transaction
Retrieving KEKs for Project 33333333-cccc
"""


def test_rewrap_errors_are_attributed_to_the_project_being_rewrapped():
    assert _projects_with_errors(REWRAP_OUTPUT) == {"22222222-bbbb"}


def test_rewrap_output_without_errors_names_no_project():
    assert _projects_with_errors(REWRAP_OUTPUT.replace("Error occurred!", "Rewrapped")) == set()
