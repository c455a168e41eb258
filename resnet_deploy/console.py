"""Terminal output: rich progress bars and messages on stderr, silenced by --quiet / --json."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@dataclass
class Ui:
    """What the CLI hands to library calls that report progress. ``quiet`` drops everything but errors."""

    quiet: bool = False
    console: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message)

    def warn(self, message: str) -> None:
        self.console.print(f"[bold yellow]warning:[/] {message}")

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Task]:
        """A progress bar; ``advance(n)`` moves it, ``note(text)`` updates the text after it."""
        if self.quiet:
            yield Task(None, None)
            return
        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        with progress:
            yield Task(progress, progress.add_task(description, total=total, note=""))


@dataclass
class Task:
    progress: Progress | None
    task_id: TaskID | None

    def advance(self, n: int = 1) -> None:
        if self.progress is not None and self.task_id is not None:
            self.progress.advance(self.task_id, n)

    def update(self, *, completed: int | None = None, total: int | None = None, note: str | None = None,
               description: str | None = None) -> None:
        if self.progress is None or self.task_id is None:
            return
        # rich leaves a field unchanged when it is None; the note is a custom field, set only when given
        self.progress.update(self.task_id, completed=completed, total=total, description=description)
        if note is not None:
            self.progress.update(self.task_id, note=note)

