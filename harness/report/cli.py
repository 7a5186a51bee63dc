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

    from harness.environment import checked_run_id, runs_dir
    from harness.report import build_report, latest_report

    out = out or Console(soft_wrap=True)
    if latest and run_id:
        raise HarnessError("report: give a RUN_ID or --latest, not both")
    run_id = checked_run_id(run_id, "RUN_ID")
    if run_id:
        # Only a run directory of this harness: never a directory named relative to here.
        run_dir = runs_dir() / run_id
        if not run_dir.is_dir():
            raise HarnessError(f"RUN_ID '{run_id}': no run directory {run_dir}")
        path = build_report(run_dir)
    else:
        path = latest_report() if latest else _newest_run_report()
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

    def report(run_id: Optional[str] = typer.Argument(None, help="Run id (a directory under reports/runs/)"),
               latest: bool = typer.Option(False, "--latest", help="Print the newest report's path")) -> None:
        try:
            report_command(run_id, latest)
        except HarnessError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2)

    typer.run(report)


if __name__ == "__main__":
    main()
