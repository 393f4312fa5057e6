"""Per-core timeline plot of a timing simulation (imcflow run --timeline)."""

import numpy as np
import pytest

from imcflow.cli import main
from imcflow.config import TINY
from imcflow.report.flow import compile_program, load_qgraph
from imcflow.report.plots import timeline_rows
from imcflow.sim.report import simulate_timing


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    return tmp_path


def test_rows_cover_the_busy_array_time():
    q, _ = load_qgraph("resnet-tiny", TINY)
    tr = simulate_timing(compile_program(q, TINY), images=4)
    rows = timeline_rows(tr, TINY.n_cores)
    for t in tr.timelines:
        spans = sorted(s for by in [rows.get(f"core {t.core}", {})] for v in by.values() for s in v)
        union, end = 0.0, -1.0
        for s, f in spans:  # union over layers (one array: layers never overlap in time)
            union += max(0.0, f - max(s, end))
            end = max(end, f)
        # the core timeline counts array time overlapped by the core's own weight loads as loading
        assert t.busy_s - 1e-12 <= union <= t.busy_s + t.load_s + 1e-12, t.core
    assert "io in" in rows and "io out" in rows
    half = timeline_rows(tr, TINY.n_cores, window_s=tr.schedule.makespan_s / 2)
    assert max(f for by in half.values() for v in by.values() for _, f in v) <= tr.schedule.makespan_s / 2


def test_run_writes_timeline_png(workdir, capsys):
    assert main(["run", "cnn-tiny", "--chip", "tiny", "--images", "3", "--timeline", "t.png"]) == 0
    assert "wrote t.png" in capsys.readouterr().out
    assert (workdir / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_timeline_needs_the_timing_report(workdir, capsys):
    np.save(workdir / "x.npy", np.zeros((1, 3, 8, 8), np.float32))
    assert main(["run", "cnn-tiny", "--chip", "tiny", "--inputs", "x.npy", "--timeline", "t.png"]) == 2
    assert "--timeline" in capsys.readouterr().err
