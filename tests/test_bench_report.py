"""docs/BENCHMARKS.md as `make bench` writes it: the run's table and notes anew, the sections
measured apart and written by hand (from "## Measured apart" on) kept word for word."""

from __future__ import annotations

from pathlib import Path

from bench import report

HAND_WRITTEN = """## Measured apart

Written by hand.

## A section of a session

- a figure measured alone: 1.23 s
"""


def a_run(figure: str) -> list[report.Measured]:
    row = report.Row(figure, "1.00 ms", "naive 10.00 ms", "10x faster", ">= 2x", True)
    return [{"pip": report.Result("Stats", [row], ["how it is measured"], 1.0)}]


def test_a_full_run_rewrites_the_table_and_keeps_the_sections_written_by_hand(tmp_path: Path):
    document = tmp_path / "BENCHMARKS.md"
    document.write_text("# Benchmarks\n\n| old table |\n\n" + HAND_WRITTEN, encoding="utf-8")

    report.write(a_run("stats p50"), ["pip"], {"CPU": "test"}, 60.0, document)
    report.write(a_run("stats p50, again"), ["pip"], {"CPU": "test"}, 60.0, document)

    text = document.read_text(encoding="utf-8")
    assert "| old table |" not in text
    assert "stats p50, again" in text and "| stats p50 " not in text
    assert text.endswith("\n\n" + HAND_WRITTEN)
    assert text.count("## Measured apart") == 1
    assert text.index("## Notes: how each figure is measured") < text.index("## Measured apart")


def test_a_document_without_the_heading_or_no_document_gets_the_run_alone(tmp_path: Path):
    document = tmp_path / "BENCHMARKS.md"
    report.write(a_run("stats p50"), ["pip"], {"CPU": "test"}, 60.0, document)
    first = document.read_text(encoding="utf-8")
    assert "Measured apart\n" not in first.replace('"Measured apart"', "")

    document.write_text("# Benchmarks\n\n## Measured apartly, not the heading\n", encoding="utf-8")
    report.write(a_run("stats p50"), ["pip"], {"CPU": "test"}, 60.0, document)
    assert document.read_text(encoding="utf-8") == first


def test_the_repositorys_document_has_the_heading_once():
    text = report.DOCUMENT.read_text(encoding="utf-8")
    assert text.count("\n" + report.KEPT_HEADING + "\n") == 1
    assert report.kept_part(report.DOCUMENT).startswith(report.KEPT_HEADING + "\n")
