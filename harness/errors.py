"""One root for every error the harness raises on purpose.

An error that reaches the CLI is printed as its message alone (no traceback): each
message must therefore name the file, field, service or package that is wrong.
"""


class HarnessError(Exception):
    """Base class: a problem the harness understood and can explain."""


class TopologyError(HarnessError):
    """A topology file is missing, unreadable or does not match the schema."""


class MissingDependency(HarnessError):
    """A program or library the environment needs is not installed."""

    def __init__(self, what: str, package: str, why: str = ""):
        self.what = what
        self.package = package
        hint = f" ({why})" if why else ""
        super().__init__(
            f"{what} not found{hint}: install the Debian package '{package}' "
            f"(apt-get install -y {package}), or run ./run setup"
        )


class ServiceStartError(HarnessError):
    """A service did not start or did not become healthy in time."""


class EnvironmentNotFound(HarnessError):
    """No run directory / state file for the given run id."""


class EndpointUnreachable(HarnessError):
    """A network endpoint did not answer within its timeout."""


class RunNotUp(HarnessError):
    """A command that acts on a run found it not up (taken down, or its services gone)."""
