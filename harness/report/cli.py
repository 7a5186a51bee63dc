"""`barbican-harness report RUN_ID` (rebuild a run's report) and `report --latest` (print
the newest report's path). Stand-alone: `python -m harness.report.cli [RUN_ID] [--latest]`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from harness.errors import HarnessError


def report_command(run_id: Optional[str], latest: bool = False, out=None) -> Path:
    """Rebuild the report of RUN_ID (default: the newest environment that is up), or with
    `latest` only find the newest report.html. Prints and returns its path."""
    from rich.console import Console

    from harness.report import build_report, latest_report

    out = out or Console(soft_wrap=True)
    if latest and run_id:
        raise HarnessError("report: give a RUN_ID or --latest, not both")
    path = latest_report() if latest else build_report(run_id) if run_id else _newest_run_report()
    out.print(str(path), markup=False, highlight=False)
    return path


def _newest_run_report() -> Path:
    from harness.environment import find_run_dir
    from harness.report import build_report

    return build_report(find_run_dir(None))


def main() -> None:
    import typer
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)

    def report(run_id: Optional[str] = typer.Argument(None, help="Run id or run directory"),
               latest: bool = typer.Option(False, "--latest", help="Print the newest report's path")) -> None:
        try:
            report_command(run_id, latest)
        except HarnessError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2)

    typer.run(report)


if __name__ == "__main__":
    main()
