"""End to end through the CLI on the ``tiny`` chip: compile -> prog.json -> show -> run --json,
for two zoo models and an ONNX file.

The saved Program, simulated functionally, must give exactly the integer outputs of the reference
executor (``run_qgraph``) on the same QGraph, and ``imcflow run --save-outputs`` must write exactly
the dequantised reference outputs. The report written by ``--json`` must carry every figure,
finite and positive. A few seconds per model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from imcflow.cli import main
from imcflow.config import get_preset
from imcflow.ir.program import Program
from imcflow.ir.report import Report
from imcflow.models import input_shape
from imcflow.pipeline import load_qgraph
from imcflow.quant.reference import dequantize_output, quantize_input, run_qgraph
from imcflow.sim.functional import run_program

POSITIVE = ("batch", "throughput_img_s", "latency_s", "energy_per_img_j", "power_w", "img_per_s_per_w", "tops",
            "tops_per_w", "utilization", "run_time_s", "macs_per_img")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMCFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    return tmp_path


def _cli(capsys, *argv: str) -> str:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert rc == 0, f"imcflow {' '.join(argv)} exited {rc}: {err}"
    return out


def _onnx_file(path: Path) -> str:
    """cnn-tiny (seeded random init) exported to ONNX with torch's exporter."""
    import torch

    from imcflow.models import get_model
    torch.manual_seed(0)
    torch.onnx.export(get_model("cnn-tiny").eval(), (torch.rand(1, *input_shape("cnn-tiny")),), str(path),
                      dynamo=False)
    return str(path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("model", ["cnn-tiny", "mlp-tiny", "onnx"])
def test_compile_show_run_on_tiny(model, workdir, capsys):
    chip = get_preset("tiny")
    shape = input_shape("cnn-tiny" if model == "onnx" else model)
    if model == "onnx":
        model = _onnx_file(workdir / "cnn_tiny.onnx")
    out = _cli(capsys, "compile", model, "--chip", "tiny", "-o", "prog.json")
    assert "wrote prog.json" in out and (workdir / "prog.json").is_file()

    shown = _cli(capsys, "show", "prog.json")
    assert shown.startswith(f"Program {Path(model).stem}") and "phase 0" in shown

    x = np.random.default_rng(1).random((5, *shape), dtype=np.float32)
    np.save("x.npy", x)
    _cli(capsys, "run", model, "--chip", "tiny", "--inputs", "x.npy", "--json", "report.json",
         "--save-outputs", "y.npy")

    text = (workdir / "report.json").read_text()
    report = json.loads(text)
    for name in POSITIVE:
        v = report[name]
        assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, f"report {name} = {v!r}"
    assert report["network"] == Path(model).stem and report["chip"] == "tiny"
    assert len(report["cores"]) == chip.n_cores
    assert report["layers"] and all(lay["macs_per_img"] >= 0 for lay in report["layers"])
    assert sum(lay["macs_per_img"] for lay in report["layers"]) == report["macs_per_img"]
    Report.from_json(text).verify()

    # the outputs: the saved Program on the simulator == reference executor == imcflow run's file
    qgraph = load_qgraph(model, chip)
    x_int = quantize_input(qgraph, x)
    ref = run_qgraph(qgraph, x_int, "bit_true", chip)
    prog = Program.load("prog.json")
    assert prog.qgraph.to_json() == qgraph.to_json()
    np.testing.assert_array_equal(run_program(prog, x_int, "bit_true"), ref)
    np.testing.assert_array_equal(np.load("y.npy"), dequantize_output(qgraph, ref))
