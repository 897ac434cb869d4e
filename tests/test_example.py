"""`examples/word_report.py`, the README's first run: a result that never changes, a real retry."""

from __future__ import annotations

import pathlib

import pytest
import trio
import trio.testing

import blazen_trio as bz
from examples import word_report

EVERY_DOCUMENT = {"documents": 4, "top": [("and", 3), ("classes", 2), ("python", 2)]}


@pytest.mark.parametrize(
    ("documents", "expected"),
    [
        (list(word_report.DOCUMENTS), EVERY_DOCUMENT),
        (
            ["trio", "msgspec"],
            {"documents": 2, "top": [("and", 2), ("structured", 2), ("async", 1)]},
        ),
    ],
)
async def test_ties_in_the_word_counts_are_broken_by_word(
    documents: list[str], expected: dict[str, object], autojump_clock: trio.testing.MockClock
) -> None:
    # Steps finishing at the same moment complete in an order trio picks at random; the
    # report must not depend on it.
    for _ in range(20):
        result = await word_report.workflow.run({"documents": documents})
        assert result.result == expected


async def test_a_failed_fetch_is_retried(autojump_clock: trio.testing.MockClock) -> None:
    commits: list[bz.StepCommit] = []
    result = await word_report.workflow.run(
        {"documents": list(word_report.DOCUMENTS)}, on_commit=commits.append
    )
    assert result.result == EVERY_DOCUMENT
    retried = [c.event for c in commits if c.step == "count_words" and c.attempt == 2]
    assert retried == [word_report.FetchDocument(name=name) for name in word_report.FLAKY]


async def test_the_example_prints_the_retry_and_the_result(
    autojump_clock: trio.testing.MockClock,
    capsys: pytest.CaptureFixture[str],
    tmp_path: pathlib.Path,
) -> None:
    await word_report.main(str(tmp_path / "word_report.db"))
    lines = capsys.readouterr().out.splitlines()
    [flaky] = word_report.FLAKY
    failed = f"errored   count_words attempt 1: ConnectionError: fetching {flaky!r} timed out"
    assert failed in lines
    assert "retrying  count_words attempt 2" in lines
    assert lines.index(failed) < lines.index("retrying  count_words attempt 2")
    assert f"result    {EVERY_DOCUMENT}" in lines
    assert any(line.startswith("stored    ") and "journal records" in line for line in lines)
