"""The outbox dispatcher: check conclusions and sticky comments reach GitHub, eventually.

A run's reports are stored with its conclusion (`Store.complete(..., reports=...)`), then sent at once
by the worker that concluded it; what GitHub refuses (a 5xx, a timeout, a rate limit) waits with a
doubling pause and is sent again by whichever replica's dispatcher claims it first, across restarts.
Sending twice is harmless: a check report is a PATCH of a known check run, a comment an upsert under
the PR's lock. A report GitHub can never accept (the check run or PR is gone) is dropped, logged.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

from github import GithubException

from bot.config import AppSettings
from bot.github.client import GitHubApp, describe
from bot.github.publish import CheckReport, CommentReport, Published, send_check, send_comment
from bot.store import NewReport, ReportSnapshot, RunSnapshot, Store

log = logging.getLogger("loopgate.outbox")
CHECK, COMMENT = "check", "comment"
# GitHub will answer these the same way however often it is asked.
PERMANENT = frozenset({400, 404, 410, 422})


def check_report(run: RunSnapshot, report: CheckReport) -> NewReport:
    return NewReport(
        run.repo, run.installation_id, CHECK, report.check_run_id, json.dumps(report.fields), run.id
    )


def comment_report(run: RunSnapshot, report: CommentReport) -> NewReport:
    payload = json.dumps({"body": report.body, "known_id": report.known_id})
    return NewReport(run.repo, run.installation_id, COMMENT, report.number, payload, run.id)


def reports_of(run: RunSnapshot, published: Published) -> list[NewReport]:
    """The check conclusion first, then the comment: the order they are claimed in."""
    reports = [check_report(run, published.check)] if published.check is not None else []
    if published.comment is not None:
        reports.append(comment_report(run, published.comment))
    return reports


class Outbox:
    def __init__(self, store: Store, github: GitHubApp, settings: AppSettings) -> None:
        self.store = store
        self.github = github
        self.settings = settings

    def deliver_due(self, *, run_id: str | None = None) -> int:
        """Send what is due (only `run_id`'s when given); returns how many GitHub accepted."""
        lease = timedelta(seconds=self.settings.outbox_lease_s)
        delivered = 0
        while reports := self.store.claim_reports(lease, run_id=run_id):
            delivered += sum(self._deliver(report) for report in reports)
            if run_id is not None:
                break  # a run's reports are claimed in one go; what failed waits for its retry
        return delivered

    def deliver_soon(self, run_id: str) -> None:
        """Try a run's reports now; whatever fails (GitHub or the database) the dispatcher retries."""
        try:
            self.deliver_due(run_id=run_id)
        except Exception:
            log.exception("delivering the reports of run %s failed; the outbox retries them", run_id)

    def _deliver(self, report: ReportSnapshot) -> bool:
        if not self.store.report_pending(report.id):
            return False  # replaced by a newer report for the same target meanwhile
        try:
            self._send(report)
        except GithubException as exc:
            if exc.status in PERMANENT:
                log.warning("dropping %s report %s: %s", report.kind, report.id, describe(exc))
                self.store.report_delivered(report.id, "dropped", describe(exc))
                return False
            self._retry(report, describe(exc))
            return False
        except Exception as exc:
            self._retry(report, describe(exc))
            return False
        self.store.report_delivered(report.id)
        return True

    def _send(self, report: ReportSnapshot) -> None:
        client = self.github.repo(report.repo, report.installation_id)
        payload = json.loads(report.payload)
        if report.kind == CHECK:
            send_check(client, CheckReport(report.target, payload))
            return
        comment = CommentReport(report.target, payload["body"], payload.get("known_id"))
        comment_id = send_comment(client, comment, self.store.comment_lock)
        if report.run_id is not None:
            self.store.set_comment(report.run_id, comment_id)

    def _retry(self, report: ReportSnapshot, error: str) -> None:
        pause = self.settings.outbox_backoff_s * 2 ** min(max(report.attempts - 1, 0), 30)
        retry_in = timedelta(seconds=min(pause, self.settings.outbox_backoff_max_s))
        log.warning(
            "%s report %s not delivered (%s); retrying in %s", report.kind, report.id, error, retry_in
        )
        self.store.report_failed(report.id, error, retry_in)
