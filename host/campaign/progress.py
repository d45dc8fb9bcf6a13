"""Campaign progress: a rich progress bar on a terminal, one plain log line per seed otherwise (CI logs).

Both write to stderr, so ``dflare run --json`` keeps stdout for the summary.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Protocol

from host.records import SeedRecord
from host.search.results import SeedStatus


class ProgressReporter(Protocol):
    """What the runner tells about a campaign as it goes."""

    def start(self, total: int, already_done: int, already_triggered: int) -> None:
        """The campaign has ``total`` requested seeds, ``already_done`` of them finished by earlier runs."""
        ...

    def seed_finished(self, record: SeedRecord) -> None:
        """One more seed finished (and is stored)."""
        ...

    def finish(self) -> None:
        """The campaign stopped (completed or interrupted)."""
        ...


class _Counters:
    def __init__(self) -> None:
        self.total = 0
        self.done = 0
        self.triggered = 0
        self.queries_this_run = 0
        self.started_at = time.monotonic()

    def start(self, total: int, already_done: int, already_triggered: int) -> None:
        self.total, self.done, self.triggered = total, already_done, already_triggered
        self.started_at = time.monotonic()

    def add(self, record: SeedRecord) -> None:
        self.done += 1
        self.triggered += int(record.status is SeedStatus.triggered)
        self.queries_this_run += record.queries

    @property
    def queries_per_s(self) -> float:
        elapsed_s = time.monotonic() - self.started_at
        return self.queries_this_run / elapsed_s if elapsed_s > 0 else 0.0


class LogProgress:
    """One line per finished seed: ``[12/50] seed 17 triggered (3 -> 5) 412 queries 0.8 s | 9 triggered, 950 q/s``."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream or sys.stderr
        self._c = _Counters()

    def start(self, total: int, already_done: int, already_triggered: int) -> None:
        self._c.start(total, already_done, already_triggered)
        resumed = f", resuming: {already_done} already finished" if already_done else ""
        self._write(f"campaign: {total} seeds{resumed}")

    def seed_finished(self, record: SeedRecord) -> None:
        self._c.add(record)
        c = self._c
        labels = ""
        if record.status is SeedStatus.skipped:
            labels = f": {record.exit_reason}"
        elif record.label_original is not None and record.label_compressed is not None:
            labels = f" ({record.label_original} -> {record.label_compressed})"
        self._write(
            f"[{c.done}/{c.total}] seed {record.seed_index} {record.status.value}{labels} "
            f"{record.queries} queries {record.seconds:.2f} s | {c.triggered} triggered, {c.queries_per_s:.0f} q/s"
        )

    def finish(self) -> None:
        c = self._c
        self._write(f"campaign: {c.done}/{c.total} seeds finished, {c.triggered} triggered")

    def _write(self, line: str) -> None:
        print(line, file=self._stream, flush=True)


class RichProgress:
    """A live bar: seeds done/total, triggered, queries/s, elapsed and ETA."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._c = _Counters()
        self._progress = Progress(
            TextColumn("[bold]seeds"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[triggered]} triggered"),
            TextColumn("{task.fields[qps]:.0f} q/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task = None

    def start(self, total: int, already_done: int, already_triggered: int) -> None:
        self._c.start(total, already_done, already_triggered)
        self._progress.start()
        self._task = self._progress.add_task("campaign", total=total, completed=already_done,
                                             triggered=already_triggered, qps=0.0)

    def seed_finished(self, record: SeedRecord) -> None:
        self._c.add(record)
        self._progress.update(self._task, completed=self._c.done, triggered=self._c.triggered,
                              qps=self._c.queries_per_s)

    def finish(self) -> None:
        self._progress.stop()


def default_progress(stream: IO[str] | None = None) -> ProgressReporter:
    """A rich bar when stderr is a terminal, plain log lines otherwise."""
    stream = stream or sys.stderr
    return RichProgress() if stream.isatty() else LogProgress(stream)
