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
    expect_finding: str = Field(min_length=1)
    description: str

    @field_validator("patch")
    @classmethod
    def _relative(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/"):
            raise ValueError("must be a path relative to the manifest")
        return value

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
        if not (path.parent / entry.patch).is_file():
            raise ConfigError(f"{path.name} {entry.name}: patch {entry.patch} not found")
    return manifest


@dataclass
class ZooRow:
    name: str
    kind: str
    expected: str
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
        _git(target, "checkout", "-q", "-B", f"agent/{entry.name}", "main")
        applied = _git(target, "apply", "--index", str((changes_dir / entry.patch).resolve()))
        if applied.returncode != 0:
            last = (applied.stderr.strip().splitlines() or ["unknown error"])[-1]
            problems[entry.name] = f"patch {entry.patch} does not apply: {last}"
        else:
            _git(target, "commit", "-q", "-m", f"agent: {entry.name}")
            problems[entry.name] = None
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
        plan = make_plan(repo, "main", "main")
        baseline = runtime.up_baseline(Source(repo, plan.base_sha), plan.config)
        rows = []
        try:
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
                                base_ref="main",
                                head_ref=f"agent/{entry.name}",
                                trigger="zoo",
                                keep_baseline=True,
                            )
                        )
                        row = _row(entry, evidence, mocks[entry.name].result())
                    rows.append(row)
                    progress(row)
        finally:
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
        mocks_only=mocks,
        verdict=verdict,
        finding=decided,
        expect_finding=entry.expect_finding,
        finding_found=entry.expect_finding in report
        or any(entry.expect_finding in r for r in evidence.reasons),
        run_id=evidence.run_id,
    )
