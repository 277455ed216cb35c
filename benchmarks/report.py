"""Numbers to text: console lines, the Markdown report and the JSON results file."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.common import RunRecord, SectionResult


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def ok_runs(runs: list[RunRecord], tool: str) -> list[RunRecord]:
    return [run for run in runs if run.tool == tool and run.ok]


def problems_cell(runs: list[RunRecord]) -> str:
    bad = [f"r{run.round}: {'; '.join(run.problems)}" for run in runs if not run.ok]
    return "ok" if not bad else "FAILED " + " | ".join(bad)


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(sections: list[SectionResult], meta: dict[str, Any]) -> str:
    out = [
        f"## Benchmark results, {meta['date']}",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine']}. Tools: {meta['tools']}. Commit: {meta['commit']}.",
        "",
    ]
    for section in sections:
        out.append(f"### {section.name}")
        out.append("")
        if section.status == "skipped":
            out += [f"Skipped: {section.reason}", ""]
            continue
        if section.rows:
            out += [markdown_table(section.columns, section.rows), ""]
        if section.status == "failed" and section.reason:
            out += [f"Failed: {section.reason}", ""]
        out += [f"- {note}" for note in section.notes]
        if section.notes:
            out.append("")
    return "\n".join(out)


def write_results(
    sections: list[SectionResult], meta: dict[str, Any], folder: Path, stamp: str
) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / f"results-{stamp}.json"
    md_path = folder / f"results-{stamp}.md"
    payload = {"meta": meta, "sections": [asdict(section) for section in sections]}
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    md_path.write_text(render_markdown(sections, meta) + "\n")
    return json_path, md_path
