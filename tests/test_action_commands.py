"""Workflow commands and the Actions files: untrusted text stays text, every output reads back whole."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from action.commands import Console, command, escape_data, escape_property, write_outputs
from action.inputs import FailOn, InputError, read_inputs
from bot.evidence import Verdict
from tests.action_harness import ActionResult, parse_outputs


def test_messages_and_properties_are_escaped_as_the_runner_unescapes_them() -> None:
    assert escape_data("100%\r\n::error::x") == "100%25%0D%0A::error::x"
    assert escape_property("a:b,c\n%") == "a%3Ab%2Cc%0A%25"
    line = command("error", "line one\nline two", file="src/a,b.py", line=7, title="t: x")
    assert line == "::error file=src/a%2Cb.py,line=7,title=t%3A x::line one%0Aline two"


@given(st.text())
def test_a_command_is_one_line_whatever_its_text(text: str) -> None:
    line = command("error", text, file=text or None, title=text or None)
    assert "\n" not in line and "\r" not in line
    assert line.startswith("::error")


def test_untrusted_text_runs_no_command() -> None:
    out = io.StringIO()
    Console(out).text("::add-mask::x\n::set-env name=LD_PRELOAD::/tmp/evil.so\n::error::pwned")
    result = ActionResult(0, out.getvalue(), "", {}, "")
    assert result.commands() == []
    start, *_, end = out.getvalue().splitlines()
    token = start.removeprefix("::stop-commands::")
    assert len(token) == 32 and end == f"::{token}::"


# The runner reads the file line by line, as Python's universal newlines do: a CR is a line end there.
@given(
    st.dictionaries(
        st.sampled_from(["verdict", "run-id", "report-path"]),
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r")),
    )
)
def test_outputs_read_back_exactly_whatever_they_hold(
    tmp_path_factory: pytest.TempPathFactory, values: dict[str, str]
) -> None:
    path = tmp_path_factory.mktemp("out") / "output"
    path.write_text("")
    hostile = {name: f"{value}\nverdict=pass\nghadelimiter_x\n" for name, value in values.items()}
    write_outputs(path, hostile)
    assert parse_outputs(path.read_text()) == hostile


def test_outputs_append_to_what_earlier_steps_wrote(tmp_path: Path) -> None:
    path = tmp_path / "output"
    path.write_text("earlier=1\n")
    write_outputs(path, {"verdict": "fail"})
    assert parse_outputs(path.read_text()) == {"earlier": "1", "verdict": "fail"}


@pytest.mark.parametrize(
    ("fail_on", "failing"),
    [
        ("fail", {"fail", "error", "inconclusive"}),
        ("error", {"fail", "error"}),
        ("never", set()),
        ("", {"fail", "error", "inconclusive"}),
    ],
)
def test_fail_on_decides_which_verdicts_fail_the_step(fail_on: str, failing: set[str]) -> None:
    policy = read_inputs({"INPUT_FAIL-ON": fail_on}).fail_on
    assert {v.value for v in Verdict if policy.fails(v)} == failing
    assert not policy.fails(None)


def test_inputs_default_and_parse() -> None:
    inputs = read_inputs(
        {"INPUT_OPEN-PR": "False", "INPUT_BASE": "refs/heads/release/1.x", "INPUT_CONFIG": "./ci/lg.yml"}
    )
    assert inputs.open_pr is False and inputs.base == "release/1.x" and inputs.config == "ci/lg.yml"
    defaults = read_inputs({})
    assert defaults.fail_on is FailOn.FAIL and defaults.open_pr is None and defaults.base is None
    assert defaults.config == ".loopgate.yml" and defaults.github_token is None
    with pytest.raises(InputError, match="input base"):
        read_inputs({"INPUT_BASE": "-x"})
