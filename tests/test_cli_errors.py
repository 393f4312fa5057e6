"""Every subcommand turns bad input into exactly one line on stderr and exit status 2.

Table-driven: each case is (command line, a piece of text the message must contain). The command
runs in-process through :func:`imcflow.cli.main` in a folder holding the fixture files named
below, so a traceback, a second line (e.g. a progress bar drawn before the error) or another exit
status fails the case. A case is skipped only when its subcommand's module does not exist yet.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imcflow.cli import COMMANDS, main

# (argv, text the one-line message must contain)
CASES: list[tuple[list[str], str]] = [
    # peak: presets, --set overrides, precisions
    (["peak", "--chip", "nope"], "nope"),
    (["peak", "--set", "adc.nope=3"], "nope"),
    (["peak", "--set", "foo"], "foo"),
    (["peak", "--set", "adc.rate_hz=abc"], "abc"),
    (["peak", "--set", "array.rows=0"], "rows"),
    (["peak", "--bits", "0"], "bits"),
    (["peak", "--bits", "9"], "bits"),
    (["peak", "--bits", "4", "--w-bits", "9"], "w_bits"),
    (["peak", "--bits", "x"], "--bits"),
    # inspect: unknown zoo name, missing / corrupt / non-ONNX files
    (["inspect", "nope"], "nope"),
    (["inspect", "missing.onnx"], "missing.onnx"),
    (["inspect", "garbage.onnx"], "garbage.onnx"),
    (["inspect", "text.txt"], "text.txt"),
    (["inspect", "cnn-tiny", "--w-bits", "0"], "w_bits"),
    (["inspect", "cnn-tiny", "--chip", "nope"], "nope"),
    (["inspect"], "model"),
    # compile: bad models, bad QGraph files, impossible mappings
    (["compile", "nope"], "nope"),
    (["compile", "missing.qgraph.json"], "missing.qgraph.json"),
    (["compile", "garbage.qgraph.json"], "garbage.qgraph.json"),
    (["compile", "empty.qgraph.json"], "empty.qgraph.json"),
    (["compile", "cnn-tiny", "--batch", "0"], "batch"),
    (["compile", "cnn-tiny", "--chip", "tiny", "--set", "array.rows=8"], "rows"),
    (["compile", "cnn-tiny", "--chip", "tiny", "--set", "grid_rows=1", "--set", "grid_cols=1",
      "--set", "simd.accumulator_bits=8"], "layer 'fc'"),
    (["compile", "cnn-tiny", "--set", "x.y=1"], "x"),
    (["compile", "cnn-tiny", "--objective", "nope"], "nope"),
    # show: missing, corrupt, non-Program and binary files
    (["show", "missing.json"], "missing.json"),
    (["show", "garbage.json"], "garbage.json"),
    (["show", "empty.json"], "empty.json"),
    (["show", "x.npy"], "x.npy"),
    # run: inputs file missing / wrong shape / not .npy, bad model, bad mode for the chip
    (["run", "cnn-tiny", "--inputs", "missing.npy"], "missing.npy"),
    (["run", "cnn-tiny", "--inputs", "wrong_shape.npy"], "(N, 3, 8, 8)"),
    (["run", "cnn-tiny", "--inputs", "garbage.json"], "garbage.json"),
    (["run", "nope", "--inputs", "x.npy"], "nope"),
    (["run", "cnn-tiny", "--chip", "ideal", "--mode", "analog", "--inputs", "x.npy"], "analog"),
    (["run", "cnn-tiny", "--inputs", "x.npy", "--calib", "wrong_shape.npy"], "--calib"),
    (["run", "cnn-tiny", "--images", "0"], "images"),
    (["run", "cnn-tiny", "--mode", "nope", "--inputs", "x.npy"], "nope"),
    (["run", "cnn-tiny", "--chip", "nope", "--inputs", "x.npy"], "nope"),
    # train: no data, data folder missing or empty
    (["train", "cnn-tiny", "--out", "out"], "--data"),
    (["train", "cnn-tiny", "--out", "out", "--data", "missing_dir"], "missing_dir"),
    (["train", "cnn-tiny", "--out", "out", "--data", "emptydir"], "emptydir"),
    # eval: bad limits, unknown model, a model without trained weights
    (["eval", "cnn-tiny", "--data", "emptydir", "--limit", "0"], "--limit"),
    (["eval", "cnn-tiny", "--data", "emptydir", "--batch-size", "0"], "--batch-size"),
    (["eval", "nope", "--data", "emptydir"], "nope"),
    (["eval", "cnn-tiny", "--data", "emptydir"], "cnn-tiny"),
    (["eval", "cnn-tiny"], "--data"),
    # reproduce: presets, overrides, accuracy limit (checked before anything is compiled)
    (["reproduce", "--chip", "nope"], "nope"),
    (["reproduce", "--set", "x.y=1"], "x"),
    (["reproduce", "--accuracy-limit", "-3"], "-3"),
    # sweep: no axis, bad field, bad value, unknown model
    (["sweep", "cnn-tiny"], "--vary"),
    (["sweep", "cnn-tiny", "--vary", "adc.nope=1"], "nope"),
    (["sweep", "cnn-tiny", "--vary", "adc.bits=99"], "adc.bits"),
    (["sweep", "nope", "--vary", "adc.rate_hz=1e7"], "nope"),
    # the dispatcher itself
    (["nosuch"], "nosuch"),
    ([], "COMMAND"),
]


def _built(name: str) -> bool:
    return importlib.util.find_spec(f"imcflow.cli.{name}") is not None


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with the bad (and a few good) input files the cases name."""
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x07garbage that is no protobuf\xff\xff")
    (tmp_path / "text.txt").write_text("hello\n")
    (tmp_path / "garbage.qgraph.json").write_text("{not json")
    (tmp_path / "empty.qgraph.json").write_text("{}")
    (tmp_path / "garbage.json").write_text("garbage")
    (tmp_path / "empty.json").write_text("{}")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.random((2, 3, 8, 8), dtype=np.float32))
    np.save(tmp_path / "wrong_shape.npy", rng.random((2, 3, 9, 9), dtype=np.float32))
    (tmp_path / "emptydir").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMCFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    return tmp_path


def _call(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse errors exit through SystemExit
        return exc.code if isinstance(exc.code, int) else 1


@pytest.mark.parametrize("argv,needle", CASES, ids=[" ".join(a) or "(none)" for a, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(argv, needle, files, capsys):
    if argv and argv[0] in COMMANDS and not _built(argv[0]):
        pytest.skip(f"imcflow {argv[0]} not built yet")
    rc = _call(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, f"exit status {rc}, stderr:\n{err}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith("imcflow: error: "), lines[0]
    assert needle in lines[0], f"message does not name {needle!r}: {lines[0]}"


def test_every_command_is_built_and_has_error_cases():
    """The table covers every subcommand, and every subcommand in COMMANDS exists."""
    covered = {argv[0] for argv, _ in CASES if argv}
    assert set(COMMANDS) <= covered, f"no error case for {sorted(set(COMMANDS) - covered)}"
    missing = [c for c in COMMANDS if not _built(c)]
    assert not missing, f"imcflow.cli modules missing for {missing}"


def test_console_exit_status_through_a_real_process(tmp_path):
    """The installed entry point (python -m imcflow) really exits 2 with one line."""
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "imcflow", "peak", "--chip", "nope"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "nope" in proc.stderr
    assert proc.stdout == ""
