"""The built-in tools: the calculator is exact, bounded and never evaluates code; the clock
names its zone and refuses unknown ones; the lesson search finds lessons or says it found none;
every tool checks its arguments against its own schema."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from streamchat.agent.tools import (
    MAX_EXPRESSION_CHARS,
    TOOLS,
    TOOLS_BY_NAME,
    ToolError,
    calculate,
    current_time,
    search_lessons,
)


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("17 * 23", "391"),
        ("2+2", "4"),
        ("0.1 + 0.2", "0.3"),
        ("1/4", "0.25"),
        ("1/3", "1/3 (≈ 0.333333333333)"),
        ("-2/3", "-2/3 (≈ -0.666666666667)"),
        ("22/7", "22/7 (≈ 3.14285714286)"),
        ("2**-200", f"1/{2**200} (≈ 6.22301527786E-61)"),
        ("1/3 + 1/6", "0.5"),
        ("-(3 - 5) * 4", "8"),
        ("-2**2", "-4"),
        ("(-2)**2", "4"),
        ("2**-2", "0.25"),
        ("2**3**2", "512"),
        ("7 // 2", "3"),
        ("-7 // 2", "-4"),
        ("7 % 3", "1"),
        ("7.5 % 2", "1.5"),
        ("1_000 * 3", "3000"),
        ("1.5e3 + 1", "1501"),
        ("12345678901234567890 * 98765432109876543210", "1219326311370217952237463801111263526900"),
        ("3 × 4 ÷ 6", "2"),
        ("2 ^ 10", "1024"),
        ("  17*23  ", "391"),
    ],
)
def test_calculate_is_exact(expression: str, value: str) -> None:
    assert calculate(expression) == value


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('true')",
        "open('/etc/passwd').read()",
        "(1).__class__",
        "[1, 2]",
        "x + 1",
        "True + 1",
        "1j * 2",
        "'a' * 3",
        "1 if 1 else 2",
        "1 < 2",
        "lambda: 1",
        "2 << 3",
        "abs(-1)",
    ],
)
def test_calculate_refuses_anything_but_arithmetic(expression: str) -> None:
    with pytest.raises(ToolError, match=r"Only numbers, \+ - \* / // % \*\* and parentheses"):
        calculate(expression)


def test_calculate_never_evaluates_code(tmp_path: pytest.TempPathFactory) -> None:
    witness = f"{tmp_path}/ran"
    with pytest.raises(ToolError):
        calculate(f"__import__('pathlib').Path('{witness}').touch()")
    assert not __import__("os").path.exists(witness)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("9**9**9", "too large"),
        ("10**1001", "too large"),
        ("(10**600) * (10**600)", "too large"),
        ("1e100000000", "too large"),
        ("1 / 10**2000", "too large"),
        ("1" * (MAX_EXPRESSION_CHARS + 1), "too long"),
        ("+".join(["1"] * 6000), "too long"),
        ("1/0", "Division by zero"),
        ("5 // 0", "Division by zero"),
        ("5 % 0", "Division by zero"),
        ("0 ** -1", "Division by zero"),
        ("2 ** 0.5", "whole numbers"),
        ("(1 +", "Could not read"),
        ("1 +* 2", "Could not read"),
        ("", "empty"),
        ("   ", "empty"),
    ],
)
def test_calculate_refuses_with_a_short_message(expression: str, message: str) -> None:
    with pytest.raises(ToolError, match=message) as caught:
        calculate(expression)
    assert len(str(caught.value)) < 120


def test_calculate_keeps_huge_but_allowed_results_exact() -> None:
    assert calculate("2**3000") == str(2**3000)
    assert calculate("10**999 + 1") == str(10**999 + 1)


def test_current_time_is_iso_in_the_zone_asked_for() -> None:
    noon = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert current_time(now=noon) == "2026-03-01T12:00:00+00:00 (Sunday, UTC)"
    assert current_time("Asia/Kolkata", now=noon) == (
        "2026-03-01T17:30:00+05:30 (Sunday, Asia/Kolkata)"
    )
    assert current_time("America/New_York", now=noon).startswith("2026-03-01T07:00:00-05:00")


def test_current_time_defaults_to_now_in_utc() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    stamp = current_time().split(" ")[0]
    after = datetime.now(UTC)
    assert before <= datetime.fromisoformat(stamp) <= after
    assert re.fullmatch(r"\S+\+00:00 \(\w+day, UTC\)", current_time())


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "America", "x" * 300])
def test_current_time_names_an_unknown_zone(zone: str) -> None:
    with pytest.raises(ToolError, match="Unknown time zone") as caught:
        current_time(zone)
    assert zone[:20] in str(caught.value)
    assert len(str(caught.value)) < 200


def test_search_lessons_lists_titles_and_excerpts_best_first() -> None:
    found = search_lessons("time to first token").splitlines()
    assert found[0].startswith("- Time to first token and tokens per second: ")
    assert 1 <= len(found) <= 3
    assert all(len(line) < 300 for line in found)


def test_search_lessons_says_when_nothing_matches() -> None:
    assert search_lessons("banana bread recipe") == "No lesson matches 'banana bread recipe'."


def test_search_lessons_refuses_an_empty_query() -> None:
    with pytest.raises(ToolError, match="empty"):
        search_lessons("  ")


def test_every_tool_has_a_name_a_one_line_description_and_an_object_schema() -> None:
    assert [tool.name for tool in TOOLS] == ["calculate", "current_time", "search_lessons"]
    for tool in TOOLS:
        assert tool.description and "\n" not in tool.description
        assert tool.parameters["type"] == "object"
        assert set(tool.parameters["required"]) <= set(tool.parameters["properties"])
        assert TOOLS_BY_NAME[tool.name] is tool


def test_tool_run_checks_arguments_against_the_schema() -> None:
    calculator = TOOLS_BY_NAME["calculate"]
    assert calculator.run(expression="17 * 23") == "391"
    assert calculator.run(expression=391) == "391"
    with pytest.raises(ToolError, match="needs the argument expression"):
        calculator.run()
    with pytest.raises(ToolError, match="has no argument code"):
        calculator.run(expression="1", code="x")
    with pytest.raises(ToolError, match="must be a string"):
        calculator.run(expression=["1"])
    with pytest.raises(ToolError, match="has no argument now"):
        TOOLS_BY_NAME["current_time"].run(now="2020-01-01")
    assert TOOLS_BY_NAME["current_time"].run().endswith("UTC)")
