"""Plan: from the refs to what must be forked and which suites must run, reading config from base."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bot.config import Config, ConfigError, LoopgateError, parse_config
from bot.config.globs import matches
from bot.runtimes.git import Git

CONFIG_FILE = ".loopgate.yml"


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


def load_base_config(git: Git, base_sha: str, override: Path | None) -> Config:
    """Config comes from the base commit: the team's checks are the gate, not the agent's edit of them."""
    if override is not None:
        try:
            return parse_config(override.read_text(encoding="utf-8"), source=str(override))
        except FileNotFoundError:
            raise ConfigError(f"{override}: no such file") from None
    text = git.show(base_sha, CONFIG_FILE)
    if text is None:
        raise ConfigError(f"{CONFIG_FILE} not found at the base commit {base_sha[:12]}")
    return parse_config(text, source=CONFIG_FILE)


def make_plan(repo: Path, base_ref: str, head_ref: str, config_file: Path | None = None) -> Plan:
    git = Git(repo)
    git.check_repository()
    base_sha, head_sha = git.resolve(base_ref), git.resolve(head_ref)
    config = load_base_config(git, base_sha, config_file)
    merge_sha = git.merge(base_sha, head_sha)
    changed = git.changed_files(base_sha, head_sha)
    affected: dict[str, list[str]] = {}
    for name, service in sorted(config.services.items()):
        hits = [path for path in changed if matches(path, service.paths)]
        if hits:
            affected[name] = hits
    plan = Plan(base_sha, head_sha, merge_sha, config, changed, affected, head_subject=git.subject(head_sha))
    suite_paths = [p for suite in config.verify.suites for p in suite.paths]
    if CONFIG_FILE in changed or any(matches(path, suite_paths) for path in changed):
        plan.run_head_suites = True
        try:
            head_text = git.show(merge_sha, CONFIG_FILE)
            plan.head_config = parse_config(head_text, source=f"{CONFIG_FILE} (head)") if head_text else None
        except LoopgateError as exc:
            plan.notes.append(f"head's {CONFIG_FILE} is invalid, so its suites did not run: {exc}")
            plan.run_head_suites = False
    return plan
