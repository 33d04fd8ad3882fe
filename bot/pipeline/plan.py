"""Plan: from the refs to what must be forked and which suites must run, reading config from base."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bot.config import CONFIG_FILE, Config, ConfigError, LoopgateError, parse_config
from bot.config.globs import matches, matches_some
from bot.config.loader import MAX_CONFIG_BYTES, ConfigFile, read_config, read_limited
from bot.runtimes.git import Git

DIRECTORY, SYMLINK = "040000", "120000"
"""Git tree modes."""


@dataclass
class Plan:
    base_sha: str
    head_sha: str
    merge_sha: str
    config: Config
    changed_files: list[str]
    affected: dict[str, list[str]]
    """Service -> the changed files that made it affected."""
    head_subject: str = ""
    head_config: Config | None = None
    run_head_suites: bool = False
    notes: list[str] = field(default_factory=list)


def load_base_config(git: Git, base_sha: str, override: Path | None) -> ConfigFile:
    """Config comes from the base commit: the team's checks are the gate, not the agent's edit of them."""
    if override is not None:
        return read_config(read_limited(override), source=str(override))
    data = git.show_bytes(base_sha, CONFIG_FILE, MAX_CONFIG_BYTES)
    if data is None:
        raise ConfigError(f"{CONFIG_FILE} not found at the base commit {base_sha[:12]}")
    return read_config(data, source=CONFIG_FILE)


def check_against_tree(loaded: ConfigFile, tree: dict[str, str]) -> list[str]:
    """Refuse a config that cannot verify anything at the base commit: a service whose globs match no
    file (no change could ever affect it) or whose cwd is not a real directory of the checkout. A dead
    glob beside live ones, or a suite's, loosens nothing, so it is returned as a note."""
    files = sorted(path for path, mode in tree.items() if mode != DIRECTORY)
    errors: list[str] = []
    notes: list[str] = []
    for name, service in sorted(loaded.config.services.items()):
        directories: list[tuple[tuple[str, ...], str]] = []
        if service.local is not None:
            directories.append((("services", name, "local", "cwd"), service.local.cwd))
        if service.kubernetes is not None and service.kubernetes.build is not None:
            context = service.kubernetes.build.context
            directories.append((("services", name, "kubernetes", "build", "context"), context))
        for loc, directory in directories:
            problem = _cwd_problem(directory, tree)
            if problem is not None:
                errors.append(f"{loaded.at(*loc)}: {problem}")
        dead = [i for i, glob in enumerate(service.paths) if not matches_some(glob, files)]
        if len(dead) == len(service.paths):
            globs = ", ".join(repr(glob) for glob in service.paths)
            where = loaded.where("services", name, "paths", 0)
            errors.append(f"{where} services.{name}.paths: no file at the base commit matches {globs}")
        else:
            notes += [_dead_glob(loaded, ("services", name, "paths", i), service.paths[i]) for i in dead]
    for index, suite in enumerate(loaded.config.verify.suites):
        for i, glob in enumerate(suite.paths):
            if not matches_some(glob, files):
                notes.append(_dead_glob(loaded, ("verify", "suites", index, "paths", i), glob))
    if errors:
        raise ConfigError(errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
    return notes


def _dead_glob(loaded: ConfigFile, loc: tuple[str | int, ...], glob: str) -> str:
    return f"{loaded.at(*loc)}: {glob!r} matches no file at the base commit"


def _cwd_problem(cwd: str, tree: dict[str, str]) -> str | None:
    """Why `cwd` is not a plain directory of the tree; a symlink anywhere in it could lead outside."""
    parts = [part for part in cwd.split("/") if part not in ("", ".")]
    for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        mode = tree.get(prefix)
        if mode is None:
            return f"{cwd!r} does not exist at the base commit"
        if mode == SYMLINK:
            return f"{cwd!r} goes through the symlink {prefix!r}, which could lead out of the repository"
        if mode != DIRECTORY:
            return f"{cwd!r} is not a directory at the base commit ({prefix!r} is not)"
    return None


def make_plan(repo: Path, base_ref: str, head_ref: str, config_file: Path | None = None) -> Plan:
    git = Git(repo)
    git.check_repository()
    base_sha, head_sha = git.resolve(base_ref), git.resolve(head_ref)
    loaded = load_base_config(git, base_sha, config_file)
    notes = check_against_tree(loaded, git.tree(base_sha))
    config = loaded.config
    merge_sha = git.merge(base_sha, head_sha)
    changed = git.changed_files(base_sha, head_sha)
    affected: dict[str, list[str]] = {}
    for name, service in sorted(config.services.items()):
        hits = [path for path in changed if matches(path, service.paths)]
        if hits:
            affected[name] = hits
    plan = Plan(base_sha, head_sha, merge_sha, config, changed, affected, head_subject=git.subject(head_sha))
    plan.notes += notes
    suite_paths = [p for suite in config.verify.suites for p in suite.paths]
    if CONFIG_FILE in changed or any(matches(path, suite_paths) for path in changed):
        plan.run_head_suites = True
        try:
            head_data = git.show_bytes(merge_sha, CONFIG_FILE, MAX_CONFIG_BYTES)
            plan.head_config = parse_config(head_data, source=f"{CONFIG_FILE} (head)") if head_data else None
        except LoopgateError as exc:
            plan.notes.append(f"head's {CONFIG_FILE} is invalid, so its suites did not run: {exc}")
            plan.run_head_suites = False
    return plan
