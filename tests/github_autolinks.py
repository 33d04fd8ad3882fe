"""GitHub's autolink and reference rules, as documented, to check the text loopgate writes to GitHub.

A CommonMark parser links none of these; GitHub links them after rendering, in plain text only
(never inside code spans, code blocks or links). Sources:

- GitHub Docs, "Autolinked references and URLs": URLs; issue and pull request references `#26`,
  `GH-26`, `owner/repo#26`; commit SHAs (7 to 40 hex digits), `user@sha`, `owner/repo@sha`.
- GitHub Docs, "Linking a pull request to an issue": the closing keywords close, closes, closed, fix,
  fixes, fixed, resolve, resolves, resolved before `#N`, `owner/repo#N` or an issue URL, case
  insensitive, a colon allowed after the keyword; in a PR body they close the issue on merge.
- GitHub Docs, "About mentions": `@user` and `@org/team` notify.
- GFM spec, "Autolinks (extension)": `www.` + a valid domain, `http://`, `https://` (and `ftp://` in
  cmark-gfm), email addresses, `mailto:` and `xmpp:`.

Every pattern here is looser than GitHub's rule: it asks for fewer boundaries (a SHA need not be a
commit of the repository, a mention need not be a user), so text none of them matches is text GitHub
does not link either.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from markdown_it import MarkdownIt
from markdown_it.token import Token

_WORD = "0-9A-Za-z_"
_KEYWORD = r"(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?)"
_REF = r"(?:#\d|GH-\d|[\w.-]+/[\w.-]+#\d|(?:https?://)?github\.com/\S+/(?:issues|pull)/\d)"

PATTERNS: dict[str, re.Pattern[str]] = {
    "issue": re.compile(r"#\d"),
    "gh issue": re.compile(r"(?i)GH-\d"),
    "cross-repo issue": re.compile(r"[\w.-]+/[\w.-]+#\d"),
    "closing keyword": re.compile(rf"(?i)(?<![{_WORD}]){_KEYWORD}:?\s*{_REF}"),
    "sha": re.compile(rf"(?<![{_WORD}])[0-9a-fA-F]{{7,}}(?![{_WORD}])"),
    "user@sha": re.compile(r"[\w-]+@[0-9a-fA-F]{7}"),
    "repo@sha": re.compile(r"[\w.-]+/[\w.-]+@[0-9a-fA-F]{7}"),
    "mention": re.compile(r"@[A-Za-z0-9]"),
    "url": re.compile(r"(?i)[a-z][a-z0-9+.-]*://"),
    "www": re.compile(r"(?i)www\.[\w-]"),
    "email": re.compile(r"[\w.+-]+@[\w-]+\.[\w-]"),
    "protocol": re.compile(r"(?i)(?:mailto|xmpp):"),
}

MD = MarkdownIt("commonmark").enable("table")


def github_links(text: str) -> list[tuple[str, str]]:
    """(kind, matched text) of everything in plain `text` that GitHub would link or act on."""
    return [(kind, match[0]) for kind, pattern in PATTERNS.items() for match in pattern.finditer(text)]


def plain_texts(markdown: str) -> list[str]:
    """The runs of plain text in rendered Markdown, where GitHub autolinks: outside code and links.

    Text inside a link label is skipped too (GitHub does not link inside a link), but only loopgate's
    own links exist in a report, which the report tests check separately.
    """
    runs: list[str] = []
    for token in MD.parse(markdown):
        if token.type == "inline":
            runs += _runs(token.children or [])
    return runs


def _runs(children: list[Token]) -> Iterator[str]:
    run: list[str] = []
    depth = 0
    for child in children:
        depth += {"link_open": 1, "link_close": -1}.get(child.type, 0)
        if child.type == "text" and not depth:
            run.append(child.content)
            continue
        if run:
            yield "".join(run)
            run = []
    if run:
        yield "".join(run)


def links_in_markdown(markdown: str) -> list[tuple[str, str]]:
    return [found for text in plain_texts(markdown) for found in github_links(text)]
