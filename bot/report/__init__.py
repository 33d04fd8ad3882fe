"""Reports of a run: Markdown for GitHub, an HTML page and JSON, all rendered from the Evidence."""

from bot.report.render import (
    COMMENT_MARKER,
    UNCONFINED_NOTICE,
    CheckOutput,
    render_check,
    render_comment,
    render_html,
    render_json,
    render_pr_body,
    render_step_summary,
)

__all__ = [
    "COMMENT_MARKER",
    "UNCONFINED_NOTICE",
    "CheckOutput",
    "render_check",
    "render_comment",
    "render_html",
    "render_json",
    "render_pr_body",
    "render_step_summary",
]
