"""Workflow commands and the Actions files, written so that no untrusted text can act as a command.

Suite logs, test names, failure messages and commit subjects come from the agent's change. The runner
reads every line of a step's output as a possible command (`::set-env`, `::add-mask`, `::error`), so
values inside a command are escaped as @actions/core escapes them, and raw text is printed only between
`::stop-commands::<token>` and `::<token>::`, with a token the text could not have known. Outputs go to
`$GITHUB_OUTPUT` as heredocs whose delimiter holds a random token, so a value cannot end its own entry
and write another.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


def escape_data(value: str) -> str:
    """A command's message: `%`, CR and LF are the runner's line and escape syntax."""
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(value: str) -> str:
    """A command's property value: `:` and `,` also separate properties from each other and the message."""
    return escape_data(value).replace(":", "%3A").replace(",", "%2C")


def command(name: str, message: str = "", **properties: str | int | None) -> str:
    """One workflow command line; properties that are None are left out."""
    given = ",".join(f"{key}={escape_property(str(value))}" for key, value in properties.items() if value)
    return f"::{name}{' ' + given if given else ''}::{escape_data(message)}"


class Console:
    """The step's log: commands go out as lines of their own, untrusted text only while commands stop."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def emit(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def error(
        self, message: str, *, file: str | None = None, line: int | None = None, title: str = ""
    ) -> None:
        self.emit(command("error", message, file=file, line=line, title=title))

    def warning(self, message: str, *, title: str = "") -> None:
        self.emit(command("warning", message, title=title))

    def notice(self, message: str, *, title: str = "") -> None:
        self.emit(command("notice", message, title=title))

    @contextmanager
    def untrusted(self) -> Iterator[None]:
        """Whatever is printed inside (by this process or its children) is text, never a command."""
        token = secrets.token_hex(16)
        self.emit(f"::stop-commands::{token}")
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            self.emit(f"::{token}::")

    def text(self, text: str) -> None:
        """Untrusted text, printed with commands stopped."""
        with self.untrusted():
            self.stream.write(text if text.endswith("\n") or not text else text + "\n")

    @contextmanager
    def group(self, title: str) -> Iterator[None]:
        self.emit(command("group", title))
        try:
            yield
        finally:
            self.emit("::endgroup::")


def write_outputs(path: Path, outputs: Mapping[str, str]) -> None:
    """Append `name<<delimiter` entries to `$GITHUB_OUTPUT`: safe for any value, multi-line included."""
    entries = []
    for name, value in outputs.items():
        delimiter = f"ghadelimiter_{secrets.token_hex(16)}"
        while delimiter in value:  # astronomically unlikely; never let a value close its own entry
            delimiter = f"ghadelimiter_{secrets.token_hex(16)}"
        entries.append(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
    with path.open("a", encoding="utf-8") as stream:
        stream.write("".join(entries))


def append_summary(path: Path, markdown: str) -> None:
    """`$GITHUB_STEP_SUMMARY` is Markdown the runner uploads (up to 1 MiB per step); it runs no command."""
    with path.open("a", encoding="utf-8") as stream:
        stream.write(markdown if markdown.endswith("\n") else markdown + "\n")
