"""Judging what ran: suite outcomes and JUnit, fork coverage from what the data plane saw."""

from bot.verify.coverage import fork_coverage
from bot.verify.junit import JUnitReport, parse_junit
from bot.verify.suites import judge_suite

__all__ = ["JUnitReport", "fork_coverage", "judge_suite", "parse_junit"]
