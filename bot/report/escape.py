"""Neutralising untrusted text for Markdown.

Test output, test names, branch names, commit messages and log tails come from the agent's branch.
Rendered into a PR comment they must not ping people, inject HTML, images or links, break out of a
table cell, or end a code fence early. Each function here makes one context safe; a value that has
passed through one of them is a `Markdown` instance, so the environment can escape everything else.

GitHub links more than Markdown does: after rendering, it turns `@user`, `#12`, `GH-12`,
`owner/repo#12`, commit SHAs, `user@sha` and bare URLs in *plain text* into links, notifications and
cross-references, and a closing keyword before a reference in a PR body (`fixes #12`) closes that
issue on merge. Inside code spans and blocks nothing is linked, so identifiers (names, paths, refs,
pointers, values) go into code spans whose fence no backtick in them can close, and logs into fenced
blocks. Prose (reasons, messages, subjects) stays plain text and gets a zero-width space (U+200B)
inside every such pattern (`neutralise_links`), which breaks it while it reads the same.
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
# Where a zero-width space breaks a reference: before the number of `#12`, `owner/repo#12` and `GH-12`
# (and so of `fixes #12`); inside `://` of any scheme, `www.` (GFM's www autolink), `mailto:`, `xmpp:`.
_BREAK_AFTER = re.compile(r"(?i)(?:#|GH-)(?=\d)|:(?=//)|www(?=\.)|(?:mailto|xmpp)(?=:)")
# A commit SHA is 7 to 40 hex digits standing as a word; `user@sha` and `owner/repo@sha` end in one.
_HEX_RUN = re.compile(r"(?<![0-9A-Za-z_])[0-9A-Fa-f]{7,}(?![0-9A-Za-z_])")
_HEX_CHUNK = 6
_BACKTICK_RUN = re.compile(r"`+")
_UNESCAPED_PIPE = re.compile(r"(?<!\\)((?:\\\\)*)\|")
ZERO_WIDTH_SPACE = "\u200b"


def one_line(text: str) -> str:
    """Collapse text to a single line without invisible characters; it is the base of every inline form."""
    return _WHITESPACE.sub(" ", _INVISIBLE.sub("", text)).strip()


def neutralise_mentions(text: str) -> str:
    """Break `@name` with a zero-width space so GitHub notifies nobody; the text still reads the same."""
    return _MENTION.sub("@" + ZERO_WIDTH_SPACE, text)


def neutralise_links(text: str) -> str:
    """Break every reference GitHub would autolink in plain text with a zero-width space (U+200B).

    GitHub finds mentions, issue references and SHAs in the text of the rendered HTML, so an entity
    such as `&#8203;` and the character itself reach it as the same text (Dependabot writes
    `@&#8203;name` for this reason). The character is used because it costs one character of a
    65,535 budget instead of seven, and because it also stays invisible where GitHub shows text
    unrendered (a check run's title), where an entity would show. A hex run of 7 or more digits is
    cut every 6 so that no piece is long enough to be a SHA. Works on raw and on escaped Markdown
    alike: escaping only adds characters that are not letters or digits.
    """
    text = _BREAK_AFTER.sub(lambda m: m[0] + ZERO_WIDTH_SPACE, neutralise_mentions(text))
    return _HEX_RUN.sub(_break_hex, text)


def _break_hex(match: re.Match[str]) -> str:
    run = match[0]
    return ZERO_WIDTH_SPACE.join(run[i : i + _HEX_CHUNK] for i in range(0, len(run), _HEX_CHUNK))


def inline(text: str) -> Markdown:
    """Untrusted text as one line of literal Markdown text: no HTML, links, emphasis, blocks, mentions,
    references or autolinks."""
    flat = one_line(text)
    escaped = _INLINE_SPECIAL.sub(lambda m: _INLINE_REPLACEMENT.get(m[0], "\\" + m[0]), flat)
    escaped = _BLOCK_START.sub(_escape_block_start, escaped, count=1)
    return Markdown(neutralise_links(escaped))


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
