"""An append-only list of everything made for one env or sandbox, written *before* it is made.

`env.json` and `sandbox.json` say what an env or sandbox is now; they are rewritten whole and may be
cut short, corrupted or never written at all when loopgate is killed. The journal only grows, one JSON
line per intent, so whatever moment a `kill -9` hits, `gc` can read which process groups, worktrees,
checkouts and databases may exist and remove them. A line cut short by the kill is skipped: nothing
was made after it.

Processes are journalled twice: their log (stdout and stderr) before the spawn, their pid after it.
A process whose pid never reached the journal is still found by that log, which is its stdout
(`processes.stop_writers`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from bot.runtimes.local.processes import ProcessRef

JOURNAL = "journal.jsonl"


class Entry(BaseModel):
    kind: Literal["process", "worktree", "checkout", "database"]
    path: str | None = None
    """The log of a process; the directory of a worktree or checkout."""
    repo: str | None = None
    """The repository a worktree belongs to."""
    name: str | None = None
    """A database, and its role of the same name."""
    process: ProcessRef | None = None


class Journal:
    def __init__(self, directory: Path) -> None:
        self.path = directory / JOURNAL

    def add(self, entry: Entry) -> None:
        """One line, appended and flushed before the caller makes what it names."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = entry.model_dump_json(exclude_none=True) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def process_starting(self, log: Path) -> None:
        self.add(Entry(kind="process", path=str(log)))

    def process_started(self, log: Path, ref: ProcessRef) -> None:
        self.add(Entry(kind="process", path=str(log), process=ref))

    def worktree(self, repo: Path, path: Path) -> None:
        self.add(Entry(kind="worktree", repo=str(repo), path=str(path)))

    def checkout(self, path: Path) -> None:
        self.add(Entry(kind="checkout", path=str(path)))

    def database(self, name: str) -> None:
        self.add(Entry(kind="database", name=name))

    def entries(self) -> list[Entry]:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        entries = []
        for line in text.splitlines():
            try:
                entries.append(Entry.model_validate_json(line))
            except ValidationError:
                continue  # cut short by a kill: nothing was made after it
        return entries

    def processes(self) -> list[ProcessRef]:
        return [e.process for e in self.entries() if e.process is not None]

    def databases(self) -> list[str]:
        return [e.name for e in self.entries() if e.kind == "database" and e.name]

    def worktrees(self) -> list[tuple[Path, Path]]:
        """(repository, worktree) pairs."""
        return [
            (Path(e.repo), Path(e.path)) for e in self.entries() if e.kind == "worktree" and e.repo and e.path
        ]

    def checkouts(self) -> list[Path]:
        return [Path(e.path) for e in self.entries() if e.kind == "checkout" and e.path]
