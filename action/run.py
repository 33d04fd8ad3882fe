"""One Action run: the Actions environment in; the App's pipeline and gate; the Actions outputs out.

The order mirrors the App's run executor: a check run on the commit first (so the PR shows loopgate is
at work), then the trusted base and its config, the pipeline, and `bot.github.publish` — the App's own
gate — and only then the step's outputs, summary and annotations, all from the one Evidence.
"""

from __future__ import annotations

import os
import signal
import tempfile
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from github import GithubException
from requests import RequestException

from action.commands import Console, append_summary, write_outputs
from action.context import ActionsContext, read_context
from action.inputs import FailOn, InputError, Inputs, read_inputs
from action.log import StageLines, annotate_failures, annotate_verdict, print_run
from action.token_client import WORKFLOW_TOKEN_LOGIN, token_repo_client
from action.workspace import Workspace
from bot.config import CONFIG_FILE, Config, ConfigError, LoopgateError, RuntimeSettings, parse_config
from bot.config.schema import Agents
from bot.evidence import ErrorKind, Evidence, GitRef, Links, Verdict, exit_code, utcnow
from bot.github.client import RepoClient, describe
from bot.github.drafts import GitHubRecord
from bot.github.gate import CHECK_NAME, NOT_GATED, is_gated, is_trusted_base, untrusted_base
from bot.github.publish import Target, publish
from bot.pipeline import Pipeline, VerifyRequest, new_run_id
from bot.report import render_comment, render_json, render_step_summary
from bot.runtimes.choice import Runtimes

TRIGGER = "action"
GITHUB_ERRORS = (GithubException, RequestException)
"""What a call to GitHub raises when GitHub refuses it or cannot be reached."""
GITHUB_FAILED_EXIT = 3
"""The verdict could not reach GitHub: the gate did not happen, which no caller should read as a pass."""


@dataclass(frozen=True)
class Prepared:
    """What the run verifies against: the trusted base branch, its commit and its config."""

    base: str
    base_sha: str
    config: Config
    config_file: Path | None


class Concluded(Exception):
    """Nothing to verify, as the App decides it: a branch `agents.branches` does not gate (`neutral`,
    so a required check never blocks people), or a push already superseded by a newer one
    (`cancelled`). The check run concludes with `why`."""

    def __init__(self, conclusion: str, title: str, why: str) -> None:
        super().__init__(why)
        self.conclusion, self.title, self.why = conclusion, title, why


def main(env: Mapping[str, str] | None = None, console: Console | None = None) -> int:
    env = dict(os.environ) if env is None else env
    console = console or Console()
    try:
        inputs = read_inputs(env)
        context = read_context(env)
    except InputError as exc:
        console.error(str(exc), title="loopgate: bad input")
        return 2
    return ActionRun(env, inputs, context, console).run()


class ActionRun:
    def __init__(
        self, env: Mapping[str, str], inputs: Inputs, context: ActionsContext, console: Console
    ) -> None:
        self.env, self.inputs, self.context, self.console = env, inputs, context, console
        self.workspace = Workspace(context.workspace)
        self.run_id = new_run_id()
        temp = Path(env.get("RUNNER_TEMP") or tempfile.gettempdir())
        self.out_dir = temp / "loopgate" / self.run_id
        self.stop_reason: str | None = None
        self.github_failed = False
        self.client: RepoClient | None = None
        self.check_id: int | None = None

    def run(self) -> int:
        ctx = self.context
        if ctx.branch is None or ctx.deleted:
            what = "a branch deletion" if ctx.deleted else f"a {ctx.event_name} event without a branch"
            self.console.notice(f"loopgate gates pushes to branches; {what} has nothing to verify")
            self._outputs({"verdict": "", "run-id": self.run_id})
            return 0
        self._start_check(ctx.branch)
        evidence = Evidence(
            run_id=self.run_id,
            repo=ctx.repository,
            base=GitRef(ref=self.inputs.base or ctx.default_branch or "?"),
            head=GitRef(ref=ctx.branch, sha=ctx.head_sha),
            trigger=TRIGGER,
            links=Links(html=ctx.run_url),
        )
        agents = Agents()
        try:
            prepared = self._prepare(ctx.branch, evidence)
            agents = self._agents(prepared.config)
            evidence = self._verify(prepared, evidence)
        except Concluded as concluded:
            return self._conclude(concluded)
        except LoopgateError as exc:
            kind = ErrorKind.CONFIG if exc.kind == "config" else ErrorKind.INFRASTRUCTURE
            self._error(evidence, kind, str(exc))
        except GITHUB_ERRORS as exc:
            self._error(evidence, ErrorKind.INFRASTRUCTURE, f"reading the repository: {describe(exc)}")
        except Exception as exc:
            # A bug, not a verdict on the change: still conclude the check run rather than leave it pending.
            with self.console.untrusted():
                traceback.print_exc()
            self._error(evidence, ErrorKind.INFRASTRUCTURE, f"loopgate failed: {describe(exc)}")
        pr_number = self._publish(ctx.branch, evidence, agents)
        return self._report(evidence, pr_number)

    @staticmethod
    def _error(evidence: Evidence, kind: ErrorKind, reason: str) -> None:
        evidence.verdict, evidence.error_kind, evidence.reasons = Verdict.ERROR, kind, [reason]
        evidence.finished_at = utcnow()

    # -- GitHub --------------------------------------------------------------------------------------

    def _start_check(self, branch: str) -> None:
        """The check run exists before the pipeline starts, as the App's does."""
        token = self.inputs.github_token
        if token is None:
            self.console.warning("no github-token: loopgate verifies but makes no check run, comment or PR")
            return
        login = self.env.get("LOOPGATE_COMMENT_AUTHOR") or WORKFLOW_TOKEN_LOGIN
        client = token_repo_client(self.context.api_url, token, self.context.repository, login)
        try:
            self.check_id = client.create_check(
                CHECK_NAME, self.context.head_sha, self.run_id, self.context.run_url
            )
            client.update_check(self.check_id, status="in_progress")
        except GITHUB_ERRORS as exc:
            self._github_error("could not create the check run (does the job grant `checks: write`?)", exc)
            return
        self.client = client

    def _publish(self, branch: str, evidence: Evidence, agents: Agents) -> int | None:
        if self.client is None or self.check_id is None:
            return None
        target = Target(
            branch=branch,
            head_sha=self.context.head_sha,
            base_branch=evidence.base.ref,
            check_run_id=self.check_id,
            run_id=self.run_id,
        )
        try:
            return publish(self.client, evidence, agents, target, GitHubRecord(self.client)).pr_number
        except GITHUB_ERRORS as exc:
            self._github_error("could not publish the verdict to GitHub", exc)
            return None

    def _github_error(self, what: str, exc: Exception) -> None:
        self.github_failed = True
        self.console.error(f"{what}: {describe(exc)}", title="loopgate: GitHub")

    def _conclude(self, concluded: Concluded) -> int:
        if self.client is not None and self.check_id is not None:
            try:
                self.client.update_check(
                    self.check_id,
                    status="completed",
                    conclusion=concluded.conclusion,
                    title=concluded.title,
                    summary=concluded.why,
                )
            except GITHUB_ERRORS as exc:
                self._github_error("could not complete the check run", exc)
        self.console.notice(concluded.why, title=f"loopgate: {concluded.title}")
        self._summary(f"**loopgate**: {concluded.why}\n")
        self._outputs({"verdict": "", "run-id": self.run_id})
        return GITHUB_FAILED_EXIT if self.github_failed and self.inputs.fail_on is not FailOn.NEVER else 0

    # -- the trusted base and its config -------------------------------------------------------------

    def _prepare(self, branch: str, evidence: Evidence) -> Prepared:
        """Trust comes from the default branch's config alone: the base is the default branch or one its
        `agents.bases` lists. Config is read at those commits, never from the checkout of the head."""
        default = self.context.default_branch or (self.client.default_branch() if self.client else None)
        if default is None:
            raise ConfigError(
                "the event does not name the default branch: pass a github-token so loopgate can ask GitHub"
            )
        self._settle_head(branch)
        self.workspace.fetch({default})
        default_sha = self.workspace.branch_sha(default)
        trusted = self._config_at(default, default_sha)
        self._require_gated(branch, trusted)
        base = self._base(branch, default, trusted.agents)
        evidence.base.ref = base
        if base != default:
            self.workspace.fetch({base})
        base_sha = default_sha if base == default else self.workspace.branch_sha(base)
        config = trusted if base == default else self._config_at(base, base_sha)
        self._require_gated(branch, config)
        if not self.workspace.has_commit(self.context.head_sha):
            raise ConfigError(
                f"commit {self.context.head_sha[:12]} is not in {self.context.workspace}:"
                " check out the repository (actions/checkout) before loopgate runs"
            )
        return Prepared(base, base_sha, config, self._config_file(base_sha))

    def _require_gated(self, branch: str, config: Config) -> None:
        """As the App: a branch the config does not gate concludes `neutral` before its base is judged."""
        if not is_gated(branch, config.agents):
            why = f"{branch} does not match agents.branches in {self.inputs.config}; nothing to gate."
            raise Concluded("neutral", NOT_GATED, why)

    def _settle_head(self, branch: str) -> None:
        """A push that is no longer the branch head is superseded, as the App supersedes it: only the
        head is verified and gated (a manually started run verifies whichever commit it names)."""
        if self.client is None or self.context.event_name != "push":
            return
        head = self.client.branch_head(branch)
        if head != self.context.head_sha:
            moved = f"{branch} moved to {head[:12]}" if head else f"{branch} no longer exists"
            why = f"superseded: {moved}; loopgate verifies and gates only the branch head."
            raise Concluded("cancelled", "superseded", why)

    def _base(self, branch: str, default: str, trusted: Agents) -> str:
        """As the App chooses it — the open PR's base, else `agents.pr_base`, else the default branch —
        unless the workflow names one; whichever it is must be trusted."""
        if self.inputs.base is not None:
            if not is_trusted_base(self.inputs.base, default, trusted):
                raise ConfigError(
                    f"input base `{self.inputs.base}` is neither the default branch nor listed in"
                    f" agents.bases of {default}'s {self.inputs.config}"
                )
            return self.inputs.base
        pull = self.client.open_pull(branch) if self.client is not None else None
        base = pull.base if pull is not None else (trusted.pr_base or default)
        if not is_trusted_base(base, default, trusted):
            raise ConfigError(untrusted_base(base, default, pull.number if pull is not None else None))
        return base

    def _config_at(self, branch: str, sha: str) -> Config:
        text = self.workspace.read(sha, self.inputs.config)
        if text is None:
            raise ConfigError(
                f"{self.inputs.config} not found on {branch} ({sha[:12]}): loopgate is not set up for this"
                " repository (see docs/github-action.md)"
            )
        return parse_config(text, source=f"{self.inputs.config} ({branch})")

    def _config_file(self, base_sha: str) -> Path | None:
        """The pipeline reads `.loopgate.yml` at the base itself; another path is handed over as the
        base commit's copy of it."""
        if self.inputs.config == CONFIG_FILE:
            return None
        text = self.workspace.read(base_sha, self.inputs.config) or ""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "base-config.yml"
        path.write_text(text, encoding="utf-8")
        return path

    def _agents(self, config: Config) -> Agents:
        if self.inputs.open_pr is None:
            return config.agents
        return config.agents.model_copy(update={"open_pr": self.inputs.open_pr})

    # -- the pipeline --------------------------------------------------------------------------------

    def _verify(self, prepared: Prepared, evidence: Evidence) -> Evidence:
        ctx = self.context
        pipeline = Pipeline(
            self._runtime(), listener=StageLines(self.console), should_stop=lambda: self.stop_reason
        )
        request = VerifyRequest(
            repo=ctx.workspace,
            base_ref=prepared.base_sha,
            head_ref=ctx.head_sha,
            config_file=prepared.config_file,
            trigger=TRIGGER,
            run_id=self.run_id,
        )
        # Builds, forks and suites run the agent's code; whatever reaches this log from them is text.
        with self._cancellable(), self.console.untrusted():
            verified = pipeline.verify(request)
        verified.repo, verified.base.ref, verified.head.ref = ctx.repository, prepared.base, evidence.head.ref
        verified.links = evidence.links
        return verified

    def _runtime(self) -> Runtimes:
        """The runtime the `runtime` input names; a config asking for the other is a config error."""
        settings = RuntimeSettings()
        temp = self.env.get("RUNNER_TEMP")
        if "LOOPGATE_STATE_DIR" not in self.env and temp:
            settings = settings.model_copy(update={"state_dir": Path(temp) / "loopgate-state"})
        if self.inputs.kubeconfig:
            kubeconfig = self._kubeconfig_file(self.inputs.kubeconfig)
            settings = settings.model_copy(update={"kubeconfig": kubeconfig})
        return Runtimes(settings, only=self.inputs.runtime.value)

    def _kubeconfig_file(self, text: str) -> Path:
        """The `kubeconfig` input (a secret's text) as a file only this user can read, outside the
        workspace the agent's code shares."""
        folder = Path(self.env.get("RUNNER_TEMP") or tempfile.gettempdir()) / f"loopgate-{self.run_id}"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = folder / "kubeconfig"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        return path

    @contextmanager
    def _cancellable(self) -> Iterator[None]:
        """A cancelled workflow run signals the step (SIGINT, then SIGTERM): stop at the next checkpoint,
        so teardown runs and the check run concludes `cancelled` instead of staying in progress."""

        def stop(signum: int, _frame: FrameType | None) -> None:
            self.stop_reason = f"the workflow run was cancelled ({signal.Signals(signum).name})"

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # -- the step's outputs --------------------------------------------------------------------------

    def _report(self, evidence: Evidence, pr_number: int | None) -> int:
        fails_step = evidence.verdict is not None and self.inputs.fail_on.fails(evidence.verdict)
        print_run(self.console, evidence)
        annotate_failures(self.console, evidence)
        annotate_verdict(self.console, evidence, fails_step)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        evidence_path, report_path = self.out_dir / "evidence.json", self.out_dir / "report.md"
        evidence_path.write_text(render_json(evidence), encoding="utf-8")
        report_path.write_text(render_comment(evidence), encoding="utf-8")
        self._summary(render_step_summary(evidence))
        self._outputs(
            {
                "verdict": evidence.verdict.value if evidence.verdict else "",
                "run-id": self.run_id,
                "evidence-path": str(evidence_path),
                "report-path": str(report_path),
                "pr-number": str(pr_number) if pr_number is not None else "",
            }
        )
        if fails_step:
            return exit_code(evidence)
        if self.github_failed and self.inputs.fail_on is not FailOn.NEVER:
            return GITHUB_FAILED_EXIT
        return 0

    def _summary(self, markdown: str) -> None:
        path = self.env.get("GITHUB_STEP_SUMMARY")
        if path:
            append_summary(Path(path), markdown)

    def _outputs(self, outputs: dict[str, str]) -> None:
        path = self.env.get("GITHUB_OUTPUT")
        if path:
            write_outputs(Path(path), outputs)
