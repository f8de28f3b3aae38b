"""README and tool agree: analyze's table headers and --json fields, the outputs of a run, the
required flags in `run --help`, and the ranks line of the analyze report."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from autotune.cli import app
from autotune.overlap import analyze
from autotune.profile import load_profiles
from autotune.report.html import analyze_page

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SAMPLE = ROOT / "profiles" / "dense_legacy_ascend_pt"
runner = CliRunner()


def _readme_json_fields() -> dict[str, list[str]]:
    """Field names of the README's `--json` sentence by where they sit: "" for the top level,
    else the name of the list of objects they belong to (e.g. "sites")."""
    start = README.index("`--json` prints `{")
    text = README[start + len("`--json` prints `{") : README.index("}`", start)]
    fields: dict[str, list[str]] = {"": []}
    stack = [""]
    for token in re.finditer(r'"(\w+)"|\[\{|\}', text):
        if token.group(0) == "[{":
            stack.append(fields[stack[-1]][-1])
            fields[stack[-1]] = []
        elif token.group(0) == "}":
            stack.pop()
        else:
            fields[stack[-1]].append(token.group(1))
    return fields


def test_readme_json_fields_are_the_real_output() -> None:
    result = runner.invoke(app, ["analyze", str(SAMPLE), "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    fields = _readme_json_fields()
    assert fields[""] == list(data)
    assert fields["sites"] == list(data["sites"][0])
    assert fields["profiles"] == list(data["profiles"][0])
    assert "windows_without_prefetch" in fields["sites"]


def test_readme_analyze_example_is_the_real_table() -> None:
    block = README[README.index("Example on the sample `profiles/dense_legacy_ascend_pt`") :]
    block = block[block.index("```\n") + 4 : block.index("\n```", block.index("```\n") + 4)]
    result = runner.invoke(
        app, ["analyze", str(SAMPLE)], env={"COLUMNS": "200"}, terminal_width=200
    )
    assert result.exit_code == 0
    real = [line.rstrip() for line in result.stdout.splitlines()]
    # The warning names the sample by path; the README writes it relative to the repository.
    real = [line.replace(str(ROOT) + "/", "") for line in real]
    assert [line.rstrip() for line in block.splitlines()] == real


def test_readme_outputs_list_the_files_of_a_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["run", "--model", "Qwen3-32B-W8A8", "--max-num-seqs", "72", "--backend", "simulate"]
    result = runner.invoke(app, [*args, "--trials", "3", "--profile-steps", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    section = README[README.index("## Outputs of a run") :]
    section = section[: section.index("\n```\n", section.index("```\n") + 4)]
    listed = set(re.findall(r"^  (\S+?)/?\s", section, flags=re.M))
    on_disk = {p.name for p in out.iterdir()}
    assert listed - {"trials/000"} == on_disk - {"trials"}
    trial = {p.name for p in (out / "trials" / "000").iterdir()}
    assert {"config.json", "trial.json", "bench_r0.json", "prof"} == trial
    for name in ("config.json", "trial.json", "bench_r*.json", "prof/*_ascend_pt"):
        assert name in section
    assert "on vllm-ascend also the logs" in section


def test_run_help_marks_model_and_max_num_seqs_required() -> None:
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    for flag in ("--model", "--max-num-seqs"):
        line = next(line for line in lines if f"{flag} " in line)
        assert "[required]" in line, line


def test_analyze_report_header_counts_ranks() -> None:
    profiles = list(load_profiles(SAMPLE))
    page = analyze_page(analyze(profiles), profiles)
    meta = dict(page.meta)
    assert meta["ranks"] == "1 (rank 1)"  # one rank, whose id is 1
