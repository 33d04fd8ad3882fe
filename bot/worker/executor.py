"""One run, start to finish: check run, branch head, trusted base and config from GitHub, mirror,
pipeline, publish.

Every id (check run, comment, PR) is stored the moment it exists, so a restart can finish what a
crash interrupted. Each conclusion is stored with its reports (check conclusion, sticky comment) for
the outbox to deliver, and only while this worker still holds the run's claim: a worker whose run was
reaped (its heartbeat stopped reaching the store) and taken over by another replica stops without
reporting anything.

Superseding follows the branch head, not the order deliveries arrive in. The webhook cancels only the
runs of a push's `before` (certainly older); everything else is settled here, when a worker starts a
run, against GitHub's branch head:

- the run's commit is the head: the branch's other queued runs *seen before the head was read* are
  superseded. A run queued after that read may belong to a newer push, so it is left to settle itself;
- it is not: a push run (or a base change) concludes `cancelled` on its commit without verifying or
  gating; a re-run someone asked for verifies its commit, and `publish` keeps its verdict off the PR.

This holds with duplicated deliveries (a push attaches to its SHA's run), reordered ones (an older
push cancels nothing newer, and its own run finds it is not the head) and several replicas (each
decision reads GitHub and the store, never a process's memory; one run per branch runs at a time). It
relies on GitHub's branch API showing a push once its delivery has arrived; a head that differs from
the run's commit is read twice before the run is cancelled, as a cheap guard against a lagging read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.config import CONFIG_FILE, AppSettings, ConfigError, LoopgateError, parse_config
from bot.config.schema import Agents, Config
from bot.evidence import ErrorKind, Evidence, GitRef, Links, Verdict, utcnow
from bot.github.client import GitHubApp, RepoClient
from bot.github.drafts import GitHubRecord, KeptOrRecorded
from bot.github.events import is_fork_branch
from bot.github.gate import CHECK_NAME, NOT_GATED, is_gated, is_trusted_base, untrusted_base
from bot.github.publish import CheckReport, Target, gate_and_render
from bot.pipeline import Pipeline, VerifyRequest
from bot.report.links import run_links
from bot.runtimes.git import Git
from bot.runtimes.protocol import Runtime, Source
from bot.store import Store
from bot.store.snapshots import RunSnapshot, RunStatus
from bot.worker.mirror import Mirrors
from bot.worker.outbox import Outbox, check_report, reports_of

log = logging.getLogger("loopgate.worker")
LOST_CLAIM = "another replica took this run over"
HEAD_SETTLE_S = 2.0
SETUP_HELP = (
    f"This repository has no {CONFIG_FILE} at the base commit, so loopgate does not gate it."
    " Add one (see docs/github-app.md) to verify agent branches against the real services."
)
# Triggers that name a commit to verify even when it is no longer the head; pushes and base changes
# speak for the branch, so a newer head makes them moot.
VERIFIES_ANY_COMMIT = frozenset({"rerun"})


@dataclass
class RunEnvironment:
    settings: AppSettings
    store: Store
    github: GitHubApp
    runtime: Runtime
    mirrors: Mirrors
    on_finished: Callable[[Evidence], None] = lambda _evidence: None
    outbox: Outbox = field(init=False)

    def __post_init__(self) -> None:
        self.outbox = Outbox(self.store, self.github, self.settings)


@dataclass
class Prepared:
    """What a run verifies against: the trusted base branch and the config read from it."""

    base: str
    config: Config


class Concluded(Exception):
    """A step finished the run (superseded, not set up, config error): nothing more to do."""


class RunExecutor:
    def __init__(self, env: RunEnvironment) -> None:
        self.env = env
        self._lost = threading.Event()
        self._verdict_out = threading.Event()

    def execute(self, run: RunSnapshot) -> None:
        """Run it with a heartbeat all along, so no replica reaps a run that is alive."""
        self._lost, self._verdict_out = threading.Event(), threading.Event()
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(run, stop), daemon=True)
        beat.start()
        try:
            self._execute(run)
        finally:
            stop.set()
            beat.join(timeout=1)

    def _execute(self, run: RunSnapshot) -> None:
        env = self.env
        client = env.github.repo(run.repo, run.installation_id)
        html, json_url = run_links(env.settings.public_url, env.settings.webhook_secret, run.id)
        check_id = run.check_run_id
        if check_id is None:
            check_id = client.create_check(CHECK_NAME, run.head_sha, run.id, html)
            env.store.set_check_run(run.id, check_id)
        client.update_check(check_id, status="in_progress")
        evidence = Evidence(
            run_id=run.id,
            repo=run.repo,
            base=GitRef(ref="?"),
            head=GitRef(ref=run.branch, sha=run.head_sha),
            trigger=run.trigger,
            links=Links(html=html, json_=json_url),
        )
        try:
            if is_fork_branch(run.branch):
                self._not_gated(client, run, evidence, check_id, "a pull request from a fork")
            self._settle_head(client, run, evidence, check_id)
            prepared = self._prepare(client, run, evidence, check_id)
        except Concluded:
            return
        self._verify(client, run, evidence, prepared, check_id)

    def _settle_head(self, client: RepoClient, run: RunSnapshot, evidence: Evidence, check_id: int) -> None:
        """Supersede by the branch head (see the module's docstring)."""
        store = self.env.store
        seen = [other.id for other in store.active_runs(run.repo, run.branch) if other.id != run.id]
        head = client.branch_head(run.branch)
        if head != run.head_sha and run.trigger not in VERIFIES_ANY_COMMIT:
            # The API may trail the push event that queued this run by a moment; cancelling the
            # newest push by mistake would leave the head unverified, so look twice.
            time.sleep(HEAD_SETTLE_S)
            head = client.branch_head(run.branch)
        if head == run.head_sha:
            self._cancel_checks(client, store.supersede_runs(seen, by_sha=run.head_sha))
            return
        if run.trigger in VERIFIES_ANY_COMMIT:
            return
        reason = (
            f"superseded by {head[:12]}, the head of {run.branch} now"
            if head
            else f"{run.branch} no longer exists"
        )
        evidence.cancelled, evidence.reasons, evidence.finished_at = True, [reason], utcnow()
        summary = f"{reason}; loopgate verifies and gates only the branch head."
        report = CheckReport.completed(check_id, "cancelled", "superseded", summary)
        self._conclude(run, evidence, report, status="cancelled")
        raise Concluded

    def _conclude(
        self, run: RunSnapshot, evidence: Evidence, report: CheckReport, status: str = "completed"
    ) -> None:
        """Conclude a run that verified nothing (superseded, not gated, not set up): its check report
        goes out with the conclusion, through the outbox."""
        conclusion = str(report.fields["conclusion"])
        self.env.store.complete(
            run.id,
            None,
            conclusion,
            evidence.model_dump_json(),
            status=status,
            reports=[check_report(run, report)],
            claimed_by=run.claimed_by,
        )
        self.env.outbox.deliver_soon(run.id)

    def _cancel_checks(self, client: RepoClient, runs: list[RunSnapshot]) -> None:
        """Superseded runs that had started once (requeued after a crash) have a check to close."""
        for other in runs:
            if other.check_run_id is not None and other.status == RunStatus.CANCELLED:
                summary = f"superseded by {other.superseded_by or '?'}"
                report = CheckReport.completed(other.check_run_id, "cancelled", "superseded", summary)
                self.env.store.enqueue_reports([check_report(other, report)])
                self.env.outbox.deliver_soon(other.id)

    def _prepare(self, client: RepoClient, run: RunSnapshot, evidence: Evidence, check_id: int) -> Prepared:
        """The trusted base and its config. Trust comes from the default branch's config alone: the
        base is the default branch or one its `agents.bases` lists, never one the agent chose."""
        default = client.default_branch()
        evidence.base.ref = default
        trusted = self._read_config(client, run, evidence, default, check_id)
        self._require_gated(client, run, evidence, trusted, check_id)
        pull = client.open_pull(run.branch)
        base = pull.base if pull else (trusted.agents.pr_base or default)
        evidence.base.ref = base
        if not is_trusted_base(base, default, trusted.agents):
            reason = untrusted_base(base, default, pull.number if pull else None)
            raise self._conclude_config_error(client, run, evidence, reason, trusted.agents, check_id)
        config = trusted if base == default else self._read_config(client, run, evidence, base, check_id)
        self._require_gated(client, run, evidence, config, check_id)
        return Prepared(base=base, config=config)

    def _require_gated(
        self, client: RepoClient, run: RunSnapshot, evidence: Evidence, config: Config, check_id: int
    ) -> None:
        """A branch the config does not gate concludes before its base is judged: people's PRs
        between their own branches are none of loopgate's business."""
        if is_gated(run.branch, config.agents):
            return
        why = f"{run.branch} does not match agents.branches in {CONFIG_FILE}"
        self._not_gated(client, run, evidence, check_id, why)

    def _not_gated(
        self, client: RepoClient, run: RunSnapshot, evidence: Evidence, check_id: int, why: str
    ) -> None:
        """`neutral`, not `skipped`: DESIGN asks for it, and a required check must never block a
        person's PR (GitHub counts both as passing; neutral says "looked, nothing to gate")."""
        summary = f"{why}; loopgate gates only agent branches, so this commit is not gated."
        self._conclude(run, evidence, CheckReport.completed(check_id, "neutral", NOT_GATED, summary))
        raise Concluded

    def _read_config(
        self, client: RepoClient, run: RunSnapshot, evidence: Evidence, branch: str, check_id: int
    ) -> Config:
        text = client.read_file(branch, CONFIG_FILE)
        if text is None:
            report = CheckReport.completed(check_id, "neutral", "loopgate is not set up", SETUP_HELP)
            self._conclude(run, evidence, report)
            raise Concluded
        try:
            return parse_config(text)
        except ConfigError as exc:
            if not is_gated(run.branch):
                # Not an agent branch by the defaults either: a broken config must not fail people's PRs.
                self._not_gated(client, run, evidence, check_id, f"{CONFIG_FILE} cannot be read ({exc})")
            raise self._conclude_config_error(client, run, evidence, str(exc), None, check_id) from None

    def _conclude_config_error(
        self,
        client: RepoClient,
        run: RunSnapshot,
        evidence: Evidence,
        reason: str,
        agents: Agents | None,
        check_id: int,
    ) -> Concluded:
        evidence.verdict, evidence.error_kind, evidence.reasons = Verdict.ERROR, ErrorKind.CONFIG, [reason]
        evidence.finished_at = utcnow()
        self._publish(client, run, evidence, agents, evidence.base.ref, check_id)
        return Concluded()

    def _verify(
        self, client: RepoClient, run: RunSnapshot, evidence: Evidence, prepared: Prepared, check_id: int
    ) -> None:
        env = self.env
        mirror = env.mirrors.sync(run.repo, run.clone_url or "", client.token(run.installation_id or 0))
        base_sha = Git(mirror).resolve(prepared.base)
        pipeline = Pipeline(env.runtime, should_stop=lambda: self._stop_reason(run.id))
        published: list[Evidence] = []

        def publish(verified: Evidence) -> None:
            """The verdict goes out before the sandbox is torn down (#13): checks, comment and gate
            do not wait for the cleanup."""
            published.append(verified)
            # Set before the run is concluded: a beat that then finds it no longer running must not
            # take its own conclusion for another replica's takeover (which would drop teardown's
            # outcome from the Evidence).
            self._verdict_out.set()
            if self._lost.is_set():
                log.warning("run %s was taken over by another replica; not reported here", run.id)
                return
            verified.repo, verified.base.ref, verified.head.ref = run.repo, prepared.base, run.branch
            verified.links = evidence.links
            self._publish(client, run, verified, prepared.config.agents, prepared.base, check_id)

        verified = pipeline.verify(
            VerifyRequest(
                repo=mirror,
                base_ref=base_sha,
                head_ref=run.head_sha,
                trigger=run.trigger,
                run_id=run.id,
                keep_baseline=True,
                on_verdict=publish,
            )
        )
        if not published:
            publish(verified)
        elif not self._lost.is_set():
            env.store.amend_evidence(run.id, verified.model_dump_json())  # now with teardown's outcome
        try:
            # Against the base branch's head now, not the run's: a warm-up may have started the
            # baseline of a newer head meanwhile (`bot.worker.warmup`), which this keeps.
            current = Git(mirror).resolve(prepared.base)
            env.runtime.retire_stale_baselines(Source(mirror, current))
        except LoopgateError:
            log.exception("retiring old baselines of %s failed", run.repo)

    def _publish(
        self,
        client: RepoClient,
        run: RunSnapshot,
        evidence: Evidence,
        agents: Agents | None,
        base: str,
        check_id: int,
    ) -> None:
        target = Target(run.branch, run.head_sha, base, check_id, comment_id=run.comment_id, run_id=run.id)
        # The store knows loopgate's drafts; a fresh database does not, and GitHub's record fills in.
        drafts = KeptOrRecorded(self.env.store, GitHubRecord(client))
        published = gate_and_render(client, evidence, agents or Agents(), target, drafts)
        if published.pr_number is not None:
            self.env.store.set_pr(run.id, published.pr_number)
        status = "cancelled" if evidence.cancelled else "completed"
        verdict = evidence.verdict.value if evidence.verdict else None
        self.env.store.complete(
            run.id,
            verdict,
            published.conclusion,
            evidence.model_dump_json(),
            status=status,
            reports=reports_of(run, published),
            claimed_by=run.claimed_by,
        )
        self.env.outbox.deliver_soon(run.id)
        self.env.on_finished(evidence)

    def _heartbeat(self, run: RunSnapshot, stop: threading.Event) -> None:
        """Beat for this worker's claim; a claim another replica took over stops the run."""
        worker = run.claimed_by or ""
        while not stop.wait(self.env.settings.heartbeat_s) and not self._verdict_out.is_set():
            try:
                if self.env.store.heartbeat(run.id, worker) and not self.env.store.holds(run.id, worker):
                    if not self._verdict_out.is_set():  # concluded by this worker, not taken over
                        self._lost.set()
                    return
            except Exception:  # the database may be briefly away; a missed beat is not fatal
                log.exception("heartbeat of run %s failed", run.id)

    def _stop_reason(self, run_id: str) -> str | None:
        if self._lost.is_set():
            return LOST_CLAIM
        if not self.env.store.cancel_requested(run_id):
            return None
        current = self.env.store.get(run_id)
        if current is not None and current.superseded_by:
            return f"superseded by {current.superseded_by[:12]}"
        return (current.cancel_reason if current else None) or "cancelled"
