"""The study framework: intervals and verdicts, the registry and --set parsing, outputs, resume."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from lossatlas.errors import UserInputError
from lossatlas.studies import get_study, mean_interval, parse_overrides, run_study, study_names
from lossatlas.studies.framework import Row, cell_seed, settle, wilson_interval
from lossatlas.studies.tables import read_rows, rows_markdown, studies_markdown
from lossatlas.studies.verdict import derived, exact, published, rate, sample
from tests import studies_fixture

SIX = ["critical-points", "deep-linear", "single-neuron", "safran-shamir", "xor-jellyfish", "index-vs-error"]


@pytest.fixture
def cells_study():
    studies_fixture.register()
    yield get_study("test-cells")
    studies_fixture.unregister()


# -- intervals and verdicts ---------------------------------------------------------------------------------
def test_wilson_interval_matches_hand_computed_values():
    # Wilson (1927) with z = 1.95996: 5/10 -> (0.2366, 0.7634); 0/10 -> (0, 0.2775); 10/10 -> (0.7225, 1)
    np.testing.assert_allclose(wilson_interval(5, 10), (0.236593090512564, 0.7634069094874361), rtol=1e-12)
    np.testing.assert_allclose(wilson_interval(0, 10), (0.0, 0.2775327998628892), rtol=1e-12)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and math.isclose(lo, 0.7224672001371107, rel_tol=1e-12)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_mean_interval_is_student_t():
    mean, ci = mean_interval([1.0, 2.0, 3.0])  # sd 1, t_0.975(2) = 4.3026527
    assert mean == 2.0
    np.testing.assert_allclose(ci, (2 - 2.484137711843753, 2 + 2.484137711843753), rtol=1e-9)
    assert mean_interval([4.0])[1] is None and math.isnan(mean_interval([])[0])


def test_row_json_round_trip_and_markdown_sources_notes_families(tmp_path):
    rows = settle([
        Row.compare("spurious_pct", {"k": 6, "n": 6}, published(0.3, "Safran & Shamir 2018, Table 1", 5.0, runs=1000),
                    rate(1, 300), family="spurious_pct, Table 1"),
        Row.compare("spurious_pct", {"k": 8, "n": 8}, published(12.6, "Safran & Shamir 2018, Table 1", 5.0, runs=1000),
                    rate(16, 100), family="spurious_pct, Table 1"),
        Row.compare("objective", {"k": 8, "n": 8}, derived(0.021, "lossatlas.studies.teacher_student.population_loss"),
                    exact(0.0216), note="why it differs")])
    assert [r.verdict for r in rows] == ["agrees", "inconclusive", "differs"]
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"rows": [r.as_json() for r in rows]}))
    assert read_rows(path)[1] == rows
    text = rows_markdown(rows)
    assert ("| objective | k=8 n=8 | derived [S2] | 0.021 | 0.0216 | — | 0 | [0.0006, 0.0006] | differs | — | [1] |"
            in text), text
    assert "- S1. Safran & Shamir 2018, Table 1" in text and "- S2. lossatlas.studies.teacher_student" in text
    assert "1. why it differs" in text and "- spurious_pct, Table 1 (2 rows): inconclusive" in text
    assert "| 300 / " in text  # runs counted / runs needed


def test_a_sample_row_carries_its_interval_and_runs():
    row = Row.compare("m", {}, derived(0.0, "lossatlas.studies.verdict.judge", 1.0), sample([0.1, -0.2, 0.05, 0.0]))
    assert row.runs == 4 and row.ci is not None and row.ci[0] < row.measured < row.ci[1]
    assert row.diff_ci90 is not None and row.source == "derived"


# -- registry and --set --------------------------------------------------------------------------------------
def test_registry_lists_the_six_studies_in_order():
    assert [n for n in study_names() if n in SIX] == SIX


def test_unknown_study_is_one_line_listing_names():
    with pytest.raises(UserInputError) as err:
        get_study("safran")
    assert "\n" not in str(err.value) and all(name in str(err.value) for name in SIX)


def test_overrides_are_typed_by_the_field(cells_study):
    got = parse_overrides(cells_study, ["cells=3", "scale=0.5", "flag=yes", "names=x,y,z"])
    assert got == {"cells": 3, "scale": 0.5, "flag": True, "names": ("x", "y", "z")}
    assert parse_overrides(cells_study, {"names": ""}) == {"names": ()}
    ss = get_study("safran-shamir")
    assert parse_overrides(ss, {"table1_ks": "6,8,10", "early_stop": "false"}) == {"table1_ks": (6, 8, 10),
                                                                                     "early_stop": False}


@pytest.mark.parametrize("item, fragment", [("bogus=1", "unknown parameter 'bogus'"),
                                            ("cells=three", "cells must be int"),
                                            ("flag=maybe", "flag must be bool"),
                                            ("names", "--set expects KEY=VALUE")])
def test_bad_overrides_are_one_line_with_the_valid_keys(cells_study, item, fragment):
    with pytest.raises(UserInputError) as err:
        parse_overrides(cells_study, [item])
    message = str(err.value)
    assert fragment in message and "\n" not in message and "cells, runs, sleep" in message


# -- running, outputs and resume -----------------------------------------------------------------------------
def test_run_study_writes_every_output_and_resumes(cells_study, tmp_path):
    first = run_study("test-cells", overrides={"cells": "3"}, seed=5, out_dir=tmp_path)
    folder = tmp_path / "test-cells"
    assert (first.computed, first.reused) == (3, 0)
    payload = json.loads((folder / "results.json").read_text())
    assert set(payload) >= {"study", "seed", "params", "elapsed_s", "rows"} and payload["seed"] == 5
    assert set(payload["rows"][0]) >= {"quantity", "key", "expected", "measured", "ci", "source", "ref", "margin",
                                       "verdict", "family", "p_holm", "runs_needed"}
    assert payload["rows"][1]["verdict"] == "not comparable"
    table = (folder / "table.md").read_text()
    assert "**Seed:** 5" in table and "| mean | cells=3 |" in table and "no published value" in table
    ds = xr.open_zarr(folder / "results.zarr", consolidated=False)
    assert ds.attrs["kind"] == "study" and ds.attrs["seed"] == 5 and json.loads(ds.attrs["params"])["cells"] == 3
    # a cell's numbers depend on the seed and its key only
    expected = np.random.default_rng(cell_seed(5, {"i": 1})).standard_normal(50)
    np.testing.assert_array_equal(ds.value.values[1], expected)
    again = run_study("test-cells", overrides={"cells": "3"}, seed=5, out_dir=tmp_path)
    assert (again.computed, again.reused) == (0, 3)
    xr.testing.assert_identical(again.dataset, first.dataset)
    with pytest.raises(UserInputError, match="other parameters or seed"):
        run_study("test-cells", overrides={"cells": "4"}, seed=5, out_dir=tmp_path)
    with pytest.raises(UserInputError, match="other parameters or seed"):
        run_study("test-cells", overrides={"cells": "3"}, seed=6, out_dir=tmp_path)
    fresh = run_study("test-cells", overrides={"cells": "4"}, seed=5, out_dir=tmp_path, overwrite=True)
    assert (fresh.computed, fresh.reused) == (4, 0)


def test_interrupted_run_keeps_finished_cells(cells_study, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_study("test-cells", overrides={"cells": "4", "fail_at": "2"}, out_dir=tmp_path)
    assert sorted(p.name for p in (tmp_path / "test-cells" / "cells").glob("*.npz")) == ["i-0.npz", "i-1.npz"]


def test_folder_that_is_not_a_study_is_refused(cells_study, tmp_path):
    (tmp_path / "test-cells").mkdir()
    (tmp_path / "test-cells" / "something").write_text("x")
    with pytest.raises(UserInputError, match="not a study folder"):
        run_study("test-cells", out_dir=tmp_path)


def test_killed_subprocess_resumes_without_redoing_cells(cells_study, tmp_path, monkeypatch):
    log = tmp_path / "computed.log"
    env = {**os.environ, "LOSSATLAS_TEST_CELL_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                          str(Path(__file__).resolve().parents[1])])}
    code = ("from tests import studies_fixture; studies_fixture.register(); from lossatlas.studies import run_study; "
            f"run_study('test-cells', overrides={{'cells': '6', 'sleep': '0.3'}}, out_dir={str(tmp_path)!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    cells = tmp_path / "test-cells" / "cells"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(cells.glob("*.npz"))) < 2:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    finished = len(list(cells.glob("*.npz")))
    assert 2 <= finished < 6, "the run was killed before it finished"
    log.unlink()
    monkeypatch.setenv("LOSSATLAS_TEST_CELL_LOG", str(log))
    result = run_study("test-cells", overrides={"cells": "6", "sleep": "0.3"}, out_dir=tmp_path)
    assert (result.computed, result.reused) == (6 - finished, finished)
    assert len(log.read_text().split()) == 6 - finished  # only the unfinished cells ran again


def test_studies_doc_lists_every_study_with_reproduce_lines(tmp_path):
    (tmp_path / "critical-points.json").write_text(json.dumps({
        "study": "critical-points", "seed": 0, "preset": "full", "params": {}, "elapsed_s": 1.0,
        "rows": [Row.compare("kind", {"f": "x^2+y^4"},
                             derived("degenerate", "lossatlas.studies.critical_points.EXAMPLES"),
                             exact("degenerate")).as_json()]}))
    text = studies_markdown(tmp_path)
    for name in SIX:
        assert f"## `{name}`" in text and f"lossatlas study run {name} --full" in text
    assert "| kind | f=x^2+y^4 | derived [S1] | degenerate | degenerate | — | 0 | — | agrees | — |  |" in text
    assert "## How a verdict is reached" in text and "Worked example" in text
    assert text.count("No full run is checked in yet.") == len(study_names()) - 1


def test_resolve_device_auto_and_checks() -> None:
    import torch

    from lossatlas.studies.framework import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(UserInputError, match="must be cpu, cuda or cuda:N, got 'cuda:x'"):
        resolve_device("cuda:x")
