"""Judging what ran: suite outcomes and JUnit, fork coverage from what the data plane saw."""

from bot.verify.coverage import tagged_counts
from bot.verify.junit import JUnitReport, parse_junit
from bot.verify.observed import Observed, RanSuite
from bot.verify.propagation import diagnose, last_tagged_hop
from bot.verify.suites import blame, judge_suite, with_repeats

__all__ = [
    "JUnitReport",
    "Observed",
    "RanSuite",
    "blame",
    "diagnose",
    "judge_suite",
    "last_tagged_hop",
    "parse_junit",
    "tagged_counts",
    "with_repeats",
]
