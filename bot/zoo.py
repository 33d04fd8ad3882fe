"""The defect zoo: every example change verified twice — by the changed services' own mocked unit
tests (what an agent's CI would run) and by loopgate — to measure what mocks miss and loopgate catches.

One baseline serves the whole run; each change gets its own sandbox on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot.config import ConfigError
from bot.evidence import Evidence, Verdict
from bot.pipeline import Pipeline, VerifyRequest, make_plan
from bot.report import render_comment
from bot.runtimes.git import Git
from bot.runtimes.local import LocalRuntime
from bot.runtimes.local.allowlist import child_env
from bot.runtimes.protocol import Source


class ZooEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")
    patch: str
    kind: Literal["defect", "good"]
    service: str = Field(description="The changed service(s), comma-separated.")
    expected: Literal["pass", "fail", "inconclusive"]
    suite_only: Literal["pass", "fail"] = Field(
        description="What the team's suite says wired directly, without loopgate (a suite-only verify)."
    )
    expect_finding: str = Field(min_length=1)
    description: str
    base_patch: str | None = Field(
        default=None, description="Applied on main to make this change's own base (e.g. a red suite)."
    )

    @field_validator("patch", "base_patch")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("/") or ".." in value.split("/")):
            raise ValueError("must be a path relative to the manifest")
        return value

    @property
    def base_ref(self) -> str:
        return f"base/{self.name}" if self.base_patch else "main"

    @property
    def services(self) -> list[str]:
        return [s.strip() for s in self.service.split(",") if s.strip()]


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    changes: list[ZooEntry] = Field(min_length=1)


def load_manifest(path: Path) -> Manifest:
    """Parse the manifest; every problem is a ConfigError naming the file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if isinstance(data, list):
        data = {"changes": data}
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise ConfigError(f"{path.name} {where}: {error['msg']}") from None
    names = [entry.name for entry in manifest.changes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{path.name}: change names used twice: {', '.join(duplicates)}")
    for entry in manifest.changes:
        for patch in (entry.patch, entry.base_patch):
            if patch is not None and not (path.parent / patch).is_file():
                raise ConfigError(f"{path.name} {entry.name}: patch {patch} not found")
    return manifest


@dataclass
class ZooRow:
    name: str
    kind: str
    expected: str
    suite_only: str
    mocks_only: Literal["passed", "failed", "error"]
    verdict: str
    finding: str
    expect_finding: str
    finding_found: bool
    run_id: str | None

    @property
    def ok(self) -> bool:
        mocks_ok = self.kind == "good" or self.mocks_only == "passed"
        return self.verdict == self.expected and self.finding_found and mocks_ok

    @property
    def caught(self) -> bool:
        return self.kind == "defect" and self.verdict == self.expected and self.verdict != "pass"


@dataclass
class ZooResult:
    rows: list[ZooRow]

    def counts(self) -> dict[str, int]:
        defects = [r for r in self.rows if r.kind == "defect"]
        good = [r for r in self.rows if r.kind == "good"]
        return {
            "defects_total": len(defects),
            "defects_caught": sum(r.caught for r in defects),
            "good_total": len(good),
            "good_passed": sum(r.verdict == "pass" for r in good),
            "mocks_only_caught": sum(r.mocks_only != "passed" for r in defects),
            "suite_only_caught": sum(r.suite_only == "fail" for r in defects),
        }

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "agent",
        "GIT_AUTHOR_EMAIL": "agent@example.com",
        "GIT_COMMITTER_NAME": "agent",
        "GIT_COMMITTER_EMAIL": "agent@example.com",
    }
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env=env)


def build_repo(example: Path, target: Path, manifest: Manifest, changes_dir: Path) -> dict[str, str | None]:
    """The example on `main` and one `agent/<name>` branch per change; value: why a patch failed."""
    shutil.copytree(
        example, target, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.db", "changes")
    )
    _git(target, "init", "-q", "-b", "main")
    _git(target, "add", "-A")
    _git(target, "commit", "-q", "-m", "example: baseline")
    problems: dict[str, str | None] = {}
    for entry in manifest.changes:
        problems[entry.name] = None
        steps = [(entry.base_ref, entry.base_patch, "team"), (f"agent/{entry.name}", entry.patch, "agent")]
        start = "main"
        for branch, patch, who in steps:
            if patch is None:
                continue
            _git(target, "checkout", "-q", "-B", branch, start)
            applied = _git(target, "apply", "--index", str((changes_dir / patch).resolve()))
            if applied.returncode != 0:
                last = (applied.stderr.strip().splitlines() or ["unknown error"])[-1]
                problems[entry.name] = f"patch {patch} does not apply: {last}"
                break
            _git(target, "commit", "-q", "-m", f"{who}: {entry.name}")
            start = branch
        _git(target, "checkout", "-q", "main")
    return problems


def mocks_only(repo: Path, entry: ZooEntry, home: Path) -> Literal["passed", "failed", "error"]:
    """The changed services' own unit tests at the change, in a checkout of their own."""
    checkout = home / f"mocks-{entry.name}"
    Git(repo).worktree_add(checkout, f"agent/{entry.name}")
    try:
        env = child_env(home / "home", {})
        outcomes = []
        for service in entry.services:
            done = subprocess.run(
                ["python", "-m", "pytest", f"services/{service}/tests", "-q", "-p", "no:cacheprovider"],
                cwd=checkout,
                env=env,
                capture_output=True,
                timeout=300,
            )
            outcomes.append(done.returncode)
        if any(code not in (0, 1) for code in outcomes):
            return "error"
        return "passed" if all(code == 0 for code in outcomes) else "failed"
    finally:
        Git(repo).worktree_remove(checkout)


def run_zoo(
    example: Path,
    manifest_path: Path,
    runtime: LocalRuntime,
    progress: Callable[[ZooRow], None] = lambda _row: None,
) -> ZooResult:
    manifest = load_manifest(manifest_path)
    workdir = Path(tempfile.mkdtemp(prefix="loopgate-zoo-"))
    repo = workdir / "repo"
    try:
        problems = build_repo(example, repo, manifest, manifest_path.parent)
        bases = sorted({"main"} | {e.base_ref for e in manifest.changes if problems[e.name] is None})
        baselines = []
        rows = []
        try:
            for ref in bases:  # one per base, each shared by its changes' sandboxes
                plan = make_plan(repo, ref, ref)
                baselines.append(runtime.up_baseline(Source(repo, plan.base_sha), plan.config))
            with ThreadPoolExecutor(max_workers=2) as pool:
                mocks = {
                    entry.name: pool.submit(mocks_only, repo, entry, workdir)
                    for entry in manifest.changes
                    if problems[entry.name] is None
                }
                for entry in manifest.changes:
                    problem = problems[entry.name]
                    if problem is not None:
                        row = ZooRow(
                            entry.name,
                            entry.kind,
                            entry.expected,
                            entry.suite_only,
                            "error",
                            "error",
                            problem,
                            entry.expect_finding,
                            False,
                            None,
                        )
                    else:
                        evidence = Pipeline(runtime).verify(
                            VerifyRequest(
                                repo=repo,
                                base_ref=entry.base_ref,
                                head_ref=f"agent/{entry.name}",
                                trigger="zoo",
                                keep_baseline=True,
                            )
                        )
                        row = _row(entry, evidence, mocks[entry.name].result())
                    rows.append(row)
                    progress(row)
        finally:
            for baseline in baselines:
                runtime.release_baseline(baseline)
        return ZooResult(rows)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _row(entry: ZooEntry, evidence: Evidence, mocks: Literal["passed", "failed", "error"]) -> ZooRow:
    verdict = evidence.verdict.value if evidence.verdict else "error"
    report = render_comment(evidence)
    decided = evidence.reasons[0] if evidence.reasons else ""
    if evidence.verdict is Verdict.PASS and evidence.reasons:
        decided = "; ".join(evidence.reasons[:2])
    return ZooRow(
        name=entry.name,
        kind=entry.kind,
        expected=entry.expected,
        suite_only=entry.suite_only,
        mocks_only=mocks,
        verdict=verdict,
        finding=decided,
        expect_finding=entry.expect_finding,
        finding_found=entry.expect_finding in report
        or any(entry.expect_finding in r for r in evidence.reasons),
        run_id=evidence.run_id,
    )
