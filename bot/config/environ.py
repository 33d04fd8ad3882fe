"""The environment a service or suite asks for: `env:` templates and `pass_env:` patterns.

Pure: the loader checks both when the file is read (so a typo is a config error with its line, not a
service that starts without its variable), and the local runtime expands them with the same code.

Template syntax, deliberately small (nothing is run through a shell): `${NAME}` is replaced by a value
loopgate gives (`LOOPGATE_<SERVICE>_URL`, `LOOPGATE_ROUTING_KEY`, ...), one the section's `pass_env`
passes, or `PATH`/`HOME`/`TMPDIR`; `$$` is a literal `$`; `{port}` (services only) is the port the
service is started on. A bare `$NAME` is refused: it reads like shell and would silently stay literal.

Hand-written rather than `string.Template`: that one accepts `$NAME` and offers no way to name the
unknown variable's position; the grammar here is three rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PATTERN = re.compile(r"[A-Za-z0-9_*?]+")

OWN_PREFIX = "LOOPGATE_"
REFUSED = ("LOOPGATE_*", "GITHUB_*", "ACTIONS_*", "INPUT_*", "KUBECONFIG")
"""Never passed from the invoking environment: loopgate's settings (its App key, webhook secret,
database URL, tokens), GitHub's and the Actions runner's tokens (`GITHUB_TOKEN`, `ACTIONS_RUNTIME_TOKEN`,
the action's `INPUT_GITHUB-TOKEN`) and the cluster credentials loopgate acts with."""
OWN = ("HOME", "TMPDIR")
"""Set by loopgate for every job (a HOME of its own): never taken from `env:` or `pass_env:`."""
ALWAYS_GIVEN = ("PATH", "HOME", "TMPDIR")
"""What a template may name besides loopgate's values and the passed ones."""

_TOKEN = re.compile(r"\$\$|\$\{([^}]*)\}|\$")


def url_var(service: str) -> str:
    """`LOOPGATE_<SERVICE>_URL`: upper-cased, non-alphanumerics become `_`."""
    return OWN_PREFIX + "".join(c if c.isalnum() else "_" for c in service.upper()) + "_URL"


def service_given(services: Iterable[str], *, state: bool) -> set[str]:
    """What loopgate gives every service: its neighbours' URLs, its own name, its state (if declared)."""
    return {*(url_var(name) for name in services), "LOOPGATE_SERVICE", *(["LOOPGATE_STATE"] if state else [])}


def suite_given(services: Iterable[str]) -> set[str]:
    """What loopgate gives every suite (the key and baggage are empty when it runs against the baseline)."""
    names = {url_var(name) for name in services}
    return names | {"LOOPGATE_ROUTING_KEY", "LOOPGATE_BAGGAGE", "LOOPGATE_JUNIT_XML"}


def template_names(value: str) -> list[str]:
    """The `${NAME}`s a template uses; ValueError on a bare `$` or a malformed `${...}`."""
    names = []
    for match in _TOKEN.finditer(value):
        token = match.group(0)
        if token == "$$":
            continue
        if token == "$":
            raise ValueError(f"{value!r}: write ${{NAME}} to use a variable, or $$ for a literal $")
        name = match.group(1)
        if not NAME.fullmatch(name):
            raise ValueError(f"{value!r}: ${{{name}}} is not a variable name")
        names.append(name)
    return names


def expand(value: str, values: Mapping[str, str]) -> str:
    """Replace `${NAME}` by `values[NAME]` (empty when it is absent at run time) and `$$` by `$`."""

    def one(match: re.Match[str]) -> str:
        return "$" if match.group(0) == "$$" else values.get(match.group(1) or "", "")

    return _TOKEN.sub(one, value)


def may_match(pattern: str, prefix: str) -> bool:
    """Whether the glob `pattern` (`*`, `?`) matches some name that starts with `prefix` (or, for a
    prefix without a trailing `_`, the name itself)."""
    if not prefix.endswith("_"):
        return fnmatchcase(prefix, pattern)
    for i, char in enumerate(pattern):
        if char == "*":
            return True  # it can absorb the rest of the prefix and anything after it
        if i == len(prefix):
            return True  # the whole prefix matched; what follows matches some suffix
        if char != "?" and char != prefix[i]:
            return False
    return len(pattern) >= len(prefix)  # all of it matched a start of the prefix: only that long


def refused_by(pattern: str) -> str | None:
    """The protected family a `pass_env` pattern could reach into, if any."""
    for refused in REFUSED:
        if may_match(pattern, refused.removesuffix("*")):
            return refused
    return None


def passed(patterns: Iterable[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The invoking environment's variables the patterns name, never a protected one: patterns are
    checked when the file is read, and filtered again here whatever the file said."""
    patterns = list(patterns)
    out = {}
    for name, value in environ.items():
        if name in OWN or any(fnmatchcase(name, r) for r in REFUSED):
            continue
        if any(fnmatchcase(name, pattern) for pattern in patterns):
            out[name] = value
    return out


def passable(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)
