"""Neutralising untrusted text for Markdown.

Test output, test names, branch names, commit messages and log tails come from the agent's branch.
Rendered into a PR comment they must not ping people, inject HTML, images or links, break out of a
table cell, or end a code fence early. Each function here makes one context safe; a value that has
passed through one of them is a `Markdown` instance, so the environment can escape everything else.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import quote


class Markdown(str):
    """Text that is already safe to place into Markdown as it is."""

    __slots__ = ()


# Unicode-aware whitespace (also U+2028, U+0085, \x0b...): one-line contexts collapse it to a space.
_WHITESPACE = re.compile(r"\s+")
# C0/C1 controls and bidi overrides: invisible, and the latter can make text read differently.
_INVISIBLE = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\u202a-\u202e\u2066-\u2069]")
# CSI and OSC sequences that colour terminal output; on a web page they are noise.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_LOG_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_INLINE_SPECIAL = re.compile(r"[\\`*_\[\]|~$&<>]")
_INLINE_REPLACEMENT = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
# A line starting with these opens a heading, quote, list or thematic break, even inside a list item.
_BLOCK_START = re.compile(r"^(?:[#+\-=]|(\d{1,9})([.)])(?= |$))")
_MENTION = re.compile(r"@(?=[A-Za-z0-9-])")
_BACKTICK_RUN = re.compile(r"`+")
_UNESCAPED_PIPE = re.compile(r"(?<!\\)((?:\\\\)*)\|")
ZERO_WIDTH_SPACE = "\u200b"


def one_line(text: str) -> str:
    """Collapse text to a single line without invisible characters; it is the base of every inline form."""
    return _WHITESPACE.sub(" ", _INVISIBLE.sub("", text)).strip()


def neutralise_mentions(text: str) -> str:
    """Break `@name` with a zero-width space so GitHub notifies nobody; the text still reads the same."""
    return _MENTION.sub("@" + ZERO_WIDTH_SPACE, text)


def inline(text: str) -> Markdown:
    """Untrusted text as one line of literal Markdown text: no HTML, links, emphasis, blocks or mentions."""
    flat = one_line(text)
    escaped = _INLINE_SPECIAL.sub(lambda m: _INLINE_REPLACEMENT.get(m[0], "\\" + m[0]), flat)
    escaped = _BLOCK_START.sub(_escape_block_start, escaped, count=1)
    return Markdown(neutralise_mentions(escaped))


def _escape_block_start(match: re.Match[str]) -> str:
    if match[1] is not None:
        return f"{match[1]}\\{match[2]}"
    return "\\" + match[0]


def cell(value: object) -> Markdown:
    """A value for one GFM table cell: escaped if it is not Markdown yet, one line, no bare `|`.

    GFM splits cells on every `|` not escaped by an odd number of backslashes, even inside code spans,
    so the escaping of pipes happens here, after the inline form is built.
    """
    markdown = value if isinstance(value, Markdown) else inline(str(value))
    flat = _WHITESPACE.sub(" ", markdown).strip()
    return Markdown(_UNESCAPED_PIPE.sub(lambda m: m[1] + "\\|", flat))


def code(text: str) -> Markdown:
    """Untrusted text as an inline code span; the delimiter is longer than any backtick run inside."""
    flat = one_line(text)
    if not flat:
        return Markdown("")
    ticks = "`" * (_longest_backtick_run(flat) + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""
    return Markdown(f"{ticks}{pad}{flat}{pad}{ticks}")


@lru_cache(maxsize=64)
def clean_log(text: str) -> str:
    """A log tail as a browser shows it: no terminal colours, no control characters, `\\n` line ends."""
    text = _ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return _LOG_CONTROL.sub("", text)


def fence_for(text: str) -> str:
    """A backtick fence that no line of `text` can close: one longer than its longest run, at least 3."""
    return "`" * max(3, _longest_backtick_run(text) + 1)


def code_block(text: str, info: str = "text") -> Markdown:
    """Untrusted text (a log tail) as a fenced code block that closes exactly where it should."""
    body = clean_log(text)
    if body and not body.endswith("\n"):
        body += "\n"
    fence = fence_for(body)
    return Markdown(f"{fence}{info}\n{body}{fence}")


def link(url: str, label: str) -> Markdown:
    """A link to one of loopgate's own pages; anything but http(s) or a path is shown, not linked."""
    flat = one_line(url)
    if not re.match(r"^(?:https?://|/)", flat, flags=re.IGNORECASE):
        return code(flat)
    # Percent-encoding keeps the destination from closing the link or starting anything else.
    destination = quote(flat, safe="/:?#[]@!$&'*+,;=%-._~")
    return Markdown(f"[{inline(label)}]({destination.replace('(', '%28').replace(')', '%29')})")


def _longest_backtick_run(text: str) -> int:
    return max((len(run) for run in _BACKTICK_RUN.findall(text)), default=0)
