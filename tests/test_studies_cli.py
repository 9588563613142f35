"""``lossatlas study``: list, show, run; one-line errors for bad input; Ctrl-C keeps cells and the same
command resumes (subprocess, SIGINT)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lossatlas.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
WITH_FIXTURE = ("import sys; from tests import studies_fixture; studies_fixture.register(); "
                "from lossatlas.cli import main; sys.argv[0] = 'lossatlas'; main()")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "COLUMNS": "200"}


def test_list_and_show():
    listed = runner.invoke(app, ["study", "list"], env={"COLUMNS": "250"})
    assert listed.exit_code == 0
    for name in ("critical-points", "deep-linear", "single-neuron", "safran-shamir", "xor-jellyfish",
                 "index-vs-error"):
        assert name in listed.output
    shown = runner.invoke(app, ["study", "show", "safran-shamir"], env={"COLUMNS": "250"})
    assert shown.exit_code == 0
    assert re.search(r"runs\s*│\s*int\s*│\s*300\s*│\s*1000", shown.output)  # key, type, quick, full
    assert re.search(r"1\s*│\s*10\s*│\s*10\s*│\s*34\.6\s*│\s*0\.03\s*│\s*0\.022", shown.output)  # Table 1, k = n = 10


def test_unknown_study_is_one_red_line_exit_2(tmp_path):
    result = runner.invoke(app, ["study", "run", "safran", "--out", str(tmp_path)], env={"COLUMNS": "300"})
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: unknown study 'safran'") and "safran-shamir" in lines[0]
    shown = runner.invoke(app, ["study", "show", "nope"], env={"COLUMNS": "300"})
    assert shown.exit_code == 2 and shown.output.strip().startswith("error: unknown study 'nope'")


@pytest.mark.parametrize("args, fragment", [
    (["--set", "bogus=1"], "unknown parameter 'bogus' for study 'safran-shamir'; valid keys: table1_ks"),
    (["--set", "runs=many"], "--set runs=many: runs must be int"),
    (["--set", "table1_ks=6,x"], "table1_ks must be tuple[int, ...]"),
    (["--set", "early_stop=perhaps"], "early_stop must be bool"),
    (["--set", "runs"], "--set expects KEY=VALUE"),
    (["--quick", "--full"], "give either --quick or --full"),
    (["--set", "runs=0"], "runs, max_steps must be positive"),
])
def test_bad_study_input_is_one_line(tmp_path, args, fragment):
    result = runner.invoke(app, ["study", "run", "safran-shamir", *args, "--out", str(tmp_path)],
                           env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], result.output
    assert not (tmp_path / "safran-shamir" / "cells").exists()


@pytest.mark.parametrize("study, device, fragment", [
    ("mnist1d-baselines", "tpu", "--set device must be cpu, cuda or cuda:N, got 'tpu'"),
    ("overparameterisation", "gpu", "--set device must be cpu, cuda or cuda:N, got 'gpu'"),
    pytest.param("skip-connections", "cuda", "--set device=cuda asked for, but no CUDA device is available; use "
                 "--set device=cpu", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")),
])
def test_a_study_device_is_checked_before_any_work(tmp_path, study, device, fragment):
    result = runner.invoke(app, ["study", "run", study, "--set", f"device={device}", "--out", str(tmp_path)],
                           env={"COLUMNS": "300"})
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and fragment in lines[0], result.output
    assert not (tmp_path / study).exists()


def test_run_prints_the_rows_and_writes_the_outputs(tmp_path):
    result = runner.invoke(app, ["study", "run", "critical-points", "--set", "functions=x^2+y^4,-x^2+3y^2",
                                 "--seed", "3", "--out", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    summary = [line for line in result.output.splitlines() if "cells computed" in line]
    assert summary and summary[0].startswith("published: ") and "differ" not in summary[0], result.output
    assert "2 cells computed, 0 reused" in summary[0] and "[S1] " in result.output
    assert "the Hessian cannot decide" in result.output
    payload = json.loads((tmp_path / "critical-points" / "results.json").read_text())
    assert payload["seed"] == 3 and payload["params"]["functions"] == ["x^2+y^4", "-x^2+3y^2"]
    # the report shows one section per study: the rows with coloured verdicts, notes, the figure embedded; a
    # surface store inside the study's cells (as the empirical studies keep) is the study's internals, not a section
    import shutil

    from lossatlas.viz.report.builder import build_report

    nested = tmp_path / "critical-points" / "cells" / "run-0" / "surface.zarr"
    shutil.copytree(tmp_path / "critical-points" / "results.zarr", nested)
    report = build_report(tmp_path, strict=True)
    html = report.path.read_text()
    assert report.sections == 1 and "Study: critical-points" in html
    assert '<span style="color:#1a7f37;font-weight:600">agrees</span>' in html
    assert "<li>the Hessian cannot decide: a zero eigenvalue</li>" in html
    assert 'src="data:image/png;base64,' in html and "x^2+y^4" in html
    # a note wrapped over several lines (as most studies' notes are) reaches the report whole
    table = tmp_path / "critical-points" / "table.md"
    table.write_text(table.read_text().replace("## Notes\n", "## Notes\n\n- Scale: a first line that wraps\n"
                                               "    onto a second line & a third.\n", 1))
    html = build_report(tmp_path, strict=True).path.read_text()
    assert "<li>Scale: a first line that wraps onto a second line &amp; a third.</li>" in html


def test_report_notes_join_wrapped_bullets():
    from lossatlas.viz.report.sections.study import list_items

    text = "- first item\n    continues here\n\n- second\n- third\n  and more\n"
    assert list_items(text) == ["first item continues here", "second", "third and more"]


def test_ctrl_c_keeps_cells_and_the_same_command_resumes(tmp_path):
    command = [sys.executable, "-c", WITH_FIXTURE, "study", "run", "test-cells", "--set", "cells=6",
               "--set", "sleep=0.3", "--out", str(tmp_path)]
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cells = tmp_path / "test-cells" / "cells"
    deadline = time.time() + 90
    while time.time() < deadline and len(list(cells.glob("*.npz"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: finished cells are saved; run the same command again to resume" in err
    finished = len(list(cells.glob("*.npz")))
    assert 2 <= finished < 6
    again = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"{6 - finished} cells computed, {finished} reused" in again.stdout


def test_show_states_the_runs_each_row_needs(tmp_path):
    from lossatlas.studies.framework import Row
    from lossatlas.studies.verdict import published, rate

    row = Row.compare("spurious_pct", {"k": 10, "n": 10},
                      published(34.6, "Safran & Shamir 2018, Table 1", 5.0, runs=1000), rate(100, 300))
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"study": "safran-shamir", "preset": "full", "rows": [row.as_json()]}))
    shown = runner.invoke(app, ["study", "show", "safran-shamir", "--results", str(path)], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    assert f"300 / {row.runs_needed}" in shown.output and row.runs_needed is not None
    missing = runner.invoke(app, ["study", "show", "safran-shamir", "--results", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "no such file" in missing.output
