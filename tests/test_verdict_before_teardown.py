"""The verdict before the cleanup (issue #13): the decided Evidence reaches the caller while the sandbox
still stands, teardown follows and its outcome is added to the same Evidence; a teardown that fails
after the verdict was reported leaves the verdict as it was (gc finishes the job). Real shop processes.
"""

from __future__ import annotations

from pathlib import Path

from bot.config import RuntimeSettings
from bot.evidence import Evidence
from bot.pipeline import Pipeline, VerifyRequest
from bot.runtimes.local import LocalRuntime
from bot.runtimes.protocol import Baseline, Sandbox
from tests.conftest import processes_under
from tests.gitrepo import GitRepo


class TeardownBreaks(LocalRuntime):
    """A runtime whose teardown fails half way: the sandbox is torn down, then the cleanup errs."""

    def teardown(self, sandbox: Sandbox) -> None:
        super().teardown(sandbox)
        raise OSError("disk went read-only while removing the worktree")


def test_the_verdict_is_reported_while_the_sandbox_stands_then_it_is_torn_down(
    shop_repo: GitRepo, shop_baseline: Baseline, state_dir: Path
) -> None:
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir))
    seen: list[tuple[str | None, int, list[str]]] = []

    def on_verdict(evidence: Evidence) -> None:
        standing = runtime.registry.sandboxes(shop_baseline.env_id)
        seen.append(
            (evidence.verdict and evidence.verdict.value, len(standing), [s.name for s in evidence.stages])
        )

    request = VerifyRequest(
        repo=shop_repo.path, base_ref="main", head_ref="agent/contract-break", on_verdict=on_verdict
    )
    evidence = Pipeline(runtime).verify(request)
    [(verdict, standing, stages)] = seen
    assert verdict == "fail" and standing >= 1
    assert stages[-1] == "decide" and "teardown" not in stages
    assert [s.name for s in evidence.stages][-1] == "teardown"
    assert evidence.stages[-1].outcome == "ok"
    assert runtime.registry.sandboxes(shop_baseline.env_id) == []
    assert evidence.finished_at is not None and evidence.finished_at <= evidence.stages[-1].started_at


def test_a_teardown_that_fails_after_the_verdict_leaves_it_and_says_so(
    shop_repo: GitRepo, shop_baseline: Baseline, state_dir: Path
) -> None:
    runtime = TeardownBreaks(RuntimeSettings(state_dir=state_dir))
    reported: list[str] = []
    request = VerifyRequest(
        repo=shop_repo.path,
        base_ref="main",
        head_ref="agent/refactor-orders",
        on_verdict=lambda evidence: reported.append(str(evidence.verdict and evidence.verdict.value)),
    )
    evidence = Pipeline(runtime).verify(request)
    assert reported == ["pass"]
    assert evidence.verdict is not None and evidence.verdict.value == "pass"  # as reported
    assert evidence.stages[-1].name == "teardown" and evidence.stages[-1].outcome == "error"
    assert "teardown: disk went read-only while removing the worktree" in evidence.notes
    # Without an early report, the same failure still turns a pass into an infrastructure error.
    late = Pipeline(runtime).verify(
        VerifyRequest(repo=shop_repo.path, base_ref="main", head_ref="agent/refactor-orders")
    )
    assert late.verdict is not None and late.verdict.value == "error"
    assert late.reasons == ["teardown failed: disk went read-only while removing the worktree"]
    assert [p for p in processes_under(state_dir) if "/sandboxes/" in p] == []
