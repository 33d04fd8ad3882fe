"""Path and branch globs, one dialect for `services.*.paths`, suite paths and `agents.branches`."""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Sequence
from functools import lru_cache


@lru_cache(maxsize=512)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a path glob: `**` spans directories, `*` and `?` stay inside one segment.

    Written here because fnmatch lets `*` cross `/`, and PurePath.full_match needs Python 3.13.
    """
    out, i = "", 0
    pattern = pattern.strip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    # A bare directory ("services/orders") owns everything below it, as in a CODEOWNERS file.
    return re.compile(f"{out}(?:/.*)?")


def matches(path: str, patterns: list[str]) -> list[str]:
    return [p for p in patterns if _glob_regex(p).fullmatch(path)]


def matches_some(pattern: str, sorted_paths: Sequence[str]) -> bool:
    """Whether `pattern` matches one of `sorted_paths`. Only paths under the pattern's literal prefix are
    tried, so checking every glob against a large tree stays cheap."""
    prefix = re.split(r"[*?]", pattern.strip("/"), maxsplit=1)[0]
    regex = _glob_regex(pattern)
    for index in range(bisect_left(sorted_paths, prefix), len(sorted_paths)):
        path = sorted_paths[index]
        if not path.startswith(prefix):
            return False
        if regex.fullmatch(path):
            return True
    return False
