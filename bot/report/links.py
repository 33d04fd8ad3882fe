"""Signed links to private evidence pages: the check run's `details_url` carries a token that opens
exactly one run, so a page can be shared with the PR's readers without an API token."""

from __future__ import annotations

import hashlib
import hmac


def link_token(secret: str, run_id: str) -> str:
    return hmac.new(f"loopgate-run-link:{secret}".encode(), run_id.encode(), hashlib.sha256).hexdigest()[:40]


def link_token_valid(secret: str, run_id: str, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(link_token(secret, run_id), token or "")


def run_links(public_url: str, secret: str, run_id: str) -> tuple[str, str]:
    """(HTML page, JSON) addresses for a run."""
    token = link_token(secret, run_id)
    base = public_url.rstrip("/")
    return f"{base}/runs/{run_id}?token={token}", f"{base}/api/runs/{run_id}?token={token}"
