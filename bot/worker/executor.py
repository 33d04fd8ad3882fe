"""One run, start to finish: check run, base and config from GitHub, mirror, pipeline, publish.

Every id (check run, comment, PR) is stored the moment it exists, so a restart can finish what a
crash interrupted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from bot.config import AppSettings, ConfigError, LoopgateError, parse_config
from bot.config.schema import Agents
from bot.evidence import ErrorKind, Evidence, GitRef, Links, Verdict, utcnow
from bot.github.client import GitHubApp, RepoClient
from bot.github.gate import CHECK_NAME, is_gated
from bot.github.publish import DRAFTED_NOTE, READY_NOTE, Target, publish
from bot.pipeline import Pipeline, VerifyRequest
from bot.pipeline.plan import CONFIG_FILE
from bot.report.links import run_links
from bot.runtimes.git import Git
from bot.runtimes.protocol import Runtime, Source
from bot.store import Store
from bot.store.snapshots import RunSnapshot
from bot.worker.mirror import Mirrors

log = logging.getLogger("loopgate.worker")
HEARTBEAT_S = 5.0
SETUP_HELP = (
    f"This repository has no {CONFIG_FILE} at the base commit, so loopgate does not gate it."
    " Add one (see docs/github-app.md) to verify agent branches against the real services."
)


@dataclass
class RunEnvironment:
    settings: AppSettings
    store: Store
    github: GitHubApp
    runtime: Runtime
    mirrors: Mirrors
    on_finished: Callable[[Evidence], None] = lambda _evidence: None


class RunExecutor:
    def __init__(self, env: RunEnvironment) -> None:
        self.env = env

    def execute(self, run: RunSnapshot) -> None:
        env = self.env
        client = env.github.repo(run.repo, run.installation_id)
        html, json_url = run_links(env.settings.public_url, env.settings.webhook_secret, run.id)
        check_id = run.check_run_id
        if check_id is None:
            check_id = client.create_check(CHECK_NAME, run.head_sha, run.id, html)
            env.store.set_check_run(run.id, check_id)
        client.update_check(check_id, status="in_progress")
        pull = client.open_pull(run.branch)
        base_branch = run.base_ref or (client.pull_base(pull.number) if pull else client.default_branch())
        evidence = Evidence(
            run_id=run.id,
            repo=run.repo,
            base=GitRef(ref=base_branch),
            head=GitRef(ref=run.branch, sha=run.head_sha),
            trigger=run.trigger,
            links=Links(html=html, json_=json_url),
        )
        text = client.read_file(base_branch, CONFIG_FILE)
        if text is None:
            client.update_check(
                check_id,
                status="completed",
                conclusion="neutral",
                title="loopgate is not set up",
                summary=SETUP_HELP,
            )
            env.store.complete(run.id, None, "neutral", evidence.model_dump_json())
            return
        try:
            config = parse_config(text)
        except ConfigError as exc:
            evidence.verdict, evidence.error_kind, evidence.reasons = (
                Verdict.ERROR,
                ErrorKind.CONFIG,
                [str(exc)],
            )
            evidence.finished_at = utcnow()
            self._publish(client, run, evidence, None, base_branch, check_id)
            return
        if not is_gated(run.branch, config.agents):
            summary = f"{run.branch} does not match agents.branches in {CONFIG_FILE}; nothing to gate."
            client.update_check(
                check_id, status="completed", conclusion="skipped", title="not gated", summary=summary
            )
            env.store.complete(run.id, None, "skipped", evidence.model_dump_json())
            return
        mirror = env.mirrors.sync(run.repo, run.clone_url or "", client.token(run.installation_id or 0))
        base_sha = Git(mirror).resolve(base_branch)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(run.id, stop), daemon=True)
        beat.start()
        try:
            pipeline = Pipeline(env.runtime, should_stop=lambda: self._stop_reason(run.id))
            verified = pipeline.verify(
                VerifyRequest(
                    repo=mirror,
                    base_ref=base_sha,
                    head_ref=run.head_sha,
                    trigger=run.trigger,
                    run_id=run.id,
                    keep_baseline=True,
                )
            )
        finally:
            stop.set()
            beat.join(timeout=1)
        verified.repo, verified.base.ref, verified.head.ref = run.repo, base_branch, run.branch
        verified.links = evidence.links
        self._publish(client, run, verified, config.agents, base_branch, check_id)
        try:
            env.runtime.retire_stale_baselines(Source(mirror, base_sha))
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
        drafted = self._drafted_by_us(run)
        target = Target(run.branch, base, check_id, comment_id=run.comment_id, drafted_by_us=drafted)
        published = publish(client, evidence, agents or Agents(), target)
        if published.pr_number is not None:
            self.env.store.set_pr(run.id, published.pr_number)
        if published.comment_id is not None:
            self.env.store.set_comment(run.id, published.comment_id)
        status = "cancelled" if evidence.cancelled else "completed"
        verdict = evidence.verdict.value if evidence.verdict else None
        self.env.store.complete(
            run.id, verdict, published.conclusion, evidence.model_dump_json(), status=status
        )
        self.env.on_finished(evidence)

    def _drafted_by_us(self, run: RunSnapshot) -> bool:
        """Is the branch's PR a draft because loopgate made it one? Only then may a pass mark it ready:
        a draft the author chose stays a draft. The newest finished run that changed the PR's draft
        state decides; failing runs that found it already drafted change nothing."""
        for earlier in self.env.store.find(repo=run.repo, branch=run.branch, limit=50):
            if earlier.id == run.id or earlier.in_flight or not earlier.evidence_json:
                continue
            evidence = earlier.evidence()
            notes = evidence.notes if evidence is not None else []
            if any(READY_NOTE in note for note in notes):
                return False
            if any(DRAFTED_NOTE in note for note in notes):
                return True
        return False

    def _heartbeat(self, run_id: str, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_S):
            self.env.store.heartbeat(run_id)

    def _stop_reason(self, run_id: str) -> str | None:
        if not self.env.store.cancel_requested(run_id):
            return None
        current = self.env.store.get(run_id)
        if current is not None and current.superseded_by:
            return f"superseded by {current.superseded_by[:12]}"
        return (current.cancel_reason if current else None) or "cancelled"
