"""The security report's recorder: a row that got through fails, and the files say so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import report


def test_a_row_that_got_through_fails_the_test_and_is_still_written(tmp_path: Path) -> None:
    entries: list[report.Entry] = []
    rec = report.Recorder("t::x")
    before = len(report.ENTRIES)
    rec.attack("1", "lookalike over CONNECT", expected="403", observed="403", ok=True,
               tried=40)
    with pytest.raises(AssertionError, match="expected 403"):
        rec.attack("20", "gateway\x1b[31m", expected="403", observed="200 \x1b]0;x\x07",
                   ok=False)
    entries = report.ENTRIES[before:]
    del report.ENTRIES[before:]  # not part of this run's real report
    json_path, md_path = report.write(entries, tmp_path)
    data = json.loads(json_path.read_text())
    assert [e["failed"] for e in data["entries"]] == [0, 1]
    assert "41 attacks (1 failed); 1 got through" in data["summary"]
    table = md_path.read_text()
    assert "\x1b" not in table and "\\x1b[31m" in table and "\\x07" in table
    assert table.index("| 1 |") < table.index("| 20 |")
