"""The two Jinja2 environments: Markdown (escaped by default) and HTML (autoescaped).

Markdown has no autoescape of its own, so the Markdown environment's `finalize` escapes every value
a template prints unless a filter has already made it `Markdown`; forgetting a filter can make a
cell look odd but never lets untrusted text through. Filters that depend on the size budget read the
`shrink` knobs from the render context.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, TypeVar

from jinja2 import BaseLoader, Environment, FileSystemLoader, PackageLoader, StrictUndefined, pass_context
from jinja2.runtime import Context

from bot.report import display, escape, requestmap
from bot.report.budget import Listing, LogTail, Shrink, head, tail

T = TypeVar("T")

TEMPLATES_ENV = "LOOPGATE_TEMPLATES_DIR"
# The repository's top-level `templates/` ships as this package (pyproject.toml maps it), so an installed
# loopgate finds its templates without any setting, in a wheel and in an editable install alike.
TEMPLATES_PACKAGE = "bot.templates"
# Failure messages can be whole assertion diffs; a table cell shows their start, the JSON has all.
MESSAGE_CHARS = 300
# No single name, reason or ref may dominate a report; these values are otherwise unbounded.
VALUE_CHARS = 500


def templates_override() -> str | None:
    """`$LOOPGATE_TEMPLATES_DIR`, a folder of templates used instead of the packaged ones; None if unset."""
    return os.environ.get(TEMPLATES_ENV) or None


def markdown_environment() -> Environment:
    return _markdown_environment(templates_override())


def html_environment() -> Environment:
    return _html_environment(templates_override())


def _loader(override: str | None) -> BaseLoader:
    if override:
        return FileSystemLoader(override)
    # "." : the package is the templates folder itself (`templates/` mapped to `bot.templates`).
    return PackageLoader(TEMPLATES_PACKAGE, ".")


@lru_cache(maxsize=4)
def _markdown_environment(override: str | None) -> Environment:
    environment = _base(override, autoescape=False, finalize=_finalize_markdown)
    environment.filters.update(
        cell=_cell,
        code=_code,
        code_block=escape.code_block,
        link=escape.link,
        plain=_plain,
        pointer=_pointer,
        message=lambda text: escape.inline(display.clip(escape.one_line(text), MESSAGE_CHARS)),
    )
    return environment


@lru_cache(maxsize=4)
def _html_environment(override: str | None) -> Environment:
    environment = _base(override, autoescape=True, finalize=_finalize_html)
    environment.filters.update(clean_log=escape.clean_log, href=_href)
    return environment


def _base(override: str | None, *, autoescape: bool, finalize: Callable[[Any], Any]) -> Environment:
    environment = Environment(
        loader=_loader(override),
        undefined=StrictUndefined,
        autoescape=autoescape,
        finalize=finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters.update(
        verdict_word=display.verdict_word,
        verdict_label=display.verdict_label,
        verdict_class=display.verdict_class,
        status=display.status_word,
        short_sha=display.short_sha,
        duration=display.duration,
        timestamp=display.timestamp,
        thousands=display.thousands,
        yes_no=display.yes_no,
        plural=display.plural,
        counts=display.counts,
        total_counts=display.total_counts,
        location=display.location,
        clip=lambda text: display.clip(text, VALUE_CHARS),
        failing=display.failing,
        broken=display.broken,
        forked=display.forked,
        finding_rows=display.finding_rows,
        differing=display.differing,
        breaking=display.breaking,
        suites_with=display.suites_with,
        gates=display.gates,
        rest=display.rest,
        count=display.count,
        headline=display.headline,
        run_duration=display.run_duration,
        suite_source=display.suite_source,
        gate_word=display.gate_word,
        from_agent=display.from_agent,
        where=display.where,
        compared_with=display.compared_with,
        request_map=requestmap.layout,
        rows=_rows,
        first_failures=_first_failures,
        log_tail=_log_tail,
    )
    environment.tests.update(config_error=display.is_config_error, problem=display.is_problem)
    return environment


@pass_context
def _rows(context: Context, items: Sequence[T]) -> Listing[T]:
    return head(items, _shrink(context).rows)


@pass_context
def _first_failures(context: Context, items: Sequence[T]) -> Listing[T]:
    return head(items, _shrink(context).failures)


@pass_context
def _log_tail(context: Context, text: str | None) -> LogTail:
    return tail(escape.clean_log(text or ""), _shrink(context).log_chars)


def _shrink(context: Context) -> Shrink:
    shrink = context["shrink"]
    if not isinstance(shrink, Shrink):
        raise TypeError("a report template is rendered without its Shrink knobs")
    return shrink


def _cell(value: object) -> escape.Markdown:
    if value is None:
        return escape.Markdown(display.NOTHING)
    if isinstance(value, escape.Markdown):
        return escape.cell(value)
    return escape.cell(display.clip(str(value), VALUE_CHARS))


def _plain(value: object) -> escape.Markdown:
    """One line of text for outputs that GitHub shows as plain text (the check title): unescaped, but
    with references broken all the same, in case GitHub ever links them there."""
    return escape.Markdown(escape.neutralise_links(escape.one_line(str(value))))


def _code(value: object) -> escape.Markdown:
    """A code span, or a dash for nothing: an empty span cannot be written in Markdown."""
    span = escape.code(display.clip(str(value), VALUE_CHARS)) if value is not None else escape.Markdown()
    return span or escape.Markdown(display.NOTHING)


def _pointer(pointer: str) -> escape.Markdown:
    """A finding's pointer as a code span, or the words for the whole body (the empty pointer)."""
    return _code(pointer) if pointer else escape.inline(display.WHOLE_BODY)


def _finalize_markdown(value: object) -> object:
    if value is None:
        return display.NOTHING
    if isinstance(value, escape.Markdown | int):
        return value
    return escape.inline(display.clip(str(value), VALUE_CHARS))


def _finalize_html(value: object) -> object:
    return display.NOTHING if value is None else value


def _href(url: str) -> str | None:
    """Only http(s) and paths become links; a `javascript:` URL in the Evidence stays text."""
    lowered = url.strip().lower()
    return url.strip() if lowered.startswith(("http://", "https://", "/")) else None
