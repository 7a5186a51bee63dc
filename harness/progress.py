"""Progress reporting for steps that take more than a second.

The CLI passes a Rich-backed reporter; the Python API and tests use the quiet one.
Step names and durations are also kept, so bench/ and reports can show where time went.
"""

from __future__ import annotations

import contextlib
import threading
import time


class Progress:
    def __init__(self) -> None:
        self.timings: list[tuple[str, float]] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def step(self, name: str):
        start = time.monotonic()
        self.started(name)
        try:
            yield
        finally:
            took = time.monotonic() - start
            with self._lock:
                self.timings.append((name, took))
            self.finished(name, took)

    def started(self, name: str) -> None:  # hooks for subclasses
        pass

    def finished(self, name: str, seconds: float) -> None:
        pass


class RichProgress(Progress):
    """One spinner line per running step; a tick line when each step ends."""

    def __init__(self, console) -> None:
        super().__init__()
        from rich.progress import Progress as _P, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = console
        self._bar = _P(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                       console=console, transient=True)
        self._tasks: dict[str, int] = {}

    def __enter__(self):
        self._bar.start()
        return self

    def __exit__(self, *exc):
        self._bar.stop()

    def started(self, name: str) -> None:
        with self._lock:
            self._tasks[name] = self._bar.add_task(name, total=None)

    def finished(self, name: str, seconds: float) -> None:
        with self._lock:
            task = self._tasks.pop(name, None)
        if task is not None:
            self._bar.remove_task(task)
        self.console.print(f"[green]✓[/green] {name} [dim]({seconds:.1f} s)[/dim]")


def print_table(console, table) -> None:
    """A table at its natural width when the output is not a terminal (a pipe, a CI log):
    rich would squeeze it to 80 columns there ("kek_mismat…"), losing the names people
    copy into commands. On a terminal it fits the terminal as usual."""
    if console.is_terminal:
        console.print(table)
        return
    from rich.measure import Measurement

    natural = Measurement.get(console, console.options.update(max_width=10_000), table).maximum
    width = console.width
    console.width = max(natural, width)
    try:
        console.print(table)
    finally:
        console.width = width
