"""``imcflow sweep``: a network on a grid of chip configurations, each compiled and simulated;
points that cannot hold the network stay in the table with the compiler's reason."""

import csv
import json

import pytest

from imcflow.cli import main
from imcflow.errors import ConfigError
from imcflow.report.sweep import SweepAxis, parse_axis


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    monkeypatch.setenv("IMCFLOW_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_adc_rate_sweep_writes_table_json_csv_and_plot(workdir, capsys):
    rc = main(["sweep", "cnn-tiny", "--chip", "tiny", "--vary", "adc.rate_hz=10e6,20e6", "--images", "4",
               "--json", "s.json", "--csv", "s.csv", "--plot", "s.png"])
    out = capsys.readouterr().out
    assert rc == 0 and "adc.rate_hz" in out and "img/s x" in out
    pts = json.loads((workdir / "s.json").read_text())["points"]
    assert [p["settings"] for p in pts] == [{"adc.rate_hz": "10e6"}, {"adc.rate_hz": "20e6"}]
    slow, fast = (p["figures"] for p in pts)
    assert 1.3 < fast["throughput_img_s"] / slow["throughput_img_s"] <= 2.0 + 1e-9  # faster ADC, faster chip
    assert all(v > 0 for v in slow.values())
    rows = list(csv.reader((workdir / "s.csv").open()))
    assert rows[0][0] == "adc.rate_hz" and len(rows) == 3 and rows[1][-2] == "1.000"
    assert (workdir / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_point_that_does_not_fit_is_listed_with_its_reason(workdir, capsys):
    assert main(["sweep", "cnn-tiny", "--chip", "tiny", "--vary", "array.rows=8,144", "--images", "2"]) == 0
    out = capsys.readouterr().out
    assert "does not run [1]" in out
    assert "[1] array.rows=8: layer" in out and "rows per input channel" in out


def test_mapping_axes_batch_and_objective(workdir):
    """Weights reloaded per phase pass: a larger batch per pass amortises them (never slower)."""
    assert main(["sweep", "cnn-tiny", "--chip", "tiny", "--set", "grid_rows=1", "--set", "array.rows=144",
                 "--vary", "objective=throughput,latency", "--vary", "batch=1,16", "--images", "16",
                 "--json", "m.json"]) == 0
    pts = json.loads((workdir / "m.json").read_text())["points"]
    assert [p["settings"]["batch"] for p in pts] == ["1", "16", "1", "16"]
    assert all(p["phases"] > 1 for p in pts)
    for one, many in ((pts[0], pts[1]), (pts[2], pts[3])):
        assert many["figures"]["throughput_img_s"] >= one["figures"]["throughput_img_s"]


@pytest.mark.parametrize("argv,words", [
    (["--vary", "objective=fast"], ["--vary objective=fast", "throughput, latency, energy"]),
    (["--vary", "batch=0,2"], ["--vary batch=0", ">= 1"]),
    (["--vary", "adc.nope=1"], ["--vary adc.nope=1", "no field 'nope'"]),
    (["--vary", "adc.rate_hz=-5"], ["--vary adc.rate_hz=-5", "must be > 0"]),
    ([], ["at least one --vary"]),
    (["--vary", "adc.rate_hz"], ["expected section.field=v1,v2"]),
    (["--vary", "adc.rate_hz=1e6", "--vary", "adc.rate_hz=2e6"], ["field twice"]),
    (["--vary", "adc.rate_hz=1e6", "--images", "0"], ["--images 0"]),
])
def test_bad_sweeps_exit_2_naming_the_problem(workdir, capsys, argv, words):
    assert main(["sweep", "cnn-tiny", "--chip", "tiny", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    for w in words:
        assert w in err


def test_parse_axis():
    assert parse_axis("io.in_bits_per_cycle = 32, 64,") == SweepAxis("io.in_bits_per_cycle", ("32", "64"))
    with pytest.raises(ConfigError, match="at least one value"):
        parse_axis("io.in_bits_per_cycle=")
