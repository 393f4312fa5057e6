"""Peak figures from the configuration and the ``imcflow peak`` command."""

import dataclasses
import json
import subprocess
import sys

import pytest

from imcflow.cli import main
from imcflow.config import JSSC2022, TINY
from imcflow.config.peak import peak
from imcflow.errors import ConfigError


def test_published_peaks():
    p8, p4 = peak(JSSC2022, 8), peak(JSSC2022, 4)
    assert p8.tops == pytest.approx(2.95, rel=0.02)
    assert p8.tops_per_w == pytest.approx(30, rel=0.02)
    assert p4.tops == pytest.approx(11.8, rel=0.02)
    assert peak(JSSC2022, 1).tops == pytest.approx(188.7, rel=0.01)


def test_peak_follows_the_config():
    base = peak(JSSC2022, 8)
    half_clock = dataclasses.replace(JSSC2022, adc=dataclasses.replace(JSSC2022.adc, rate_hz=10e6))
    assert peak(half_clock, 8).tops == pytest.approx(base.tops / 2)
    assert peak(half_clock, 8).tops_per_w == pytest.approx(base.tops_per_w)
    costly = dataclasses.replace(JSSC2022, energy=dataclasses.replace(JSSC2022.energy, column_eval_j=2.4e-12))
    assert peak(costly, 8).tops_per_w == pytest.approx(base.tops_per_w / 2)
    t = peak(TINY, 4, 2)
    assert t.macs_per_mvm == 72 * 16 and t.macs_per_s == pytest.approx(4 * 72 * 16 / (4 * 50e-9))
    for bad in (0, 9):
        with pytest.raises(ConfigError, match=f"bits = {bad}"):
            peak(JSSC2022, bad)


def test_cli_json(capsys):
    assert main(["peak", "--chip", "jssc2022", "--bits", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tops"] == pytest.approx(2.95, rel=0.02) and out["tops_per_w"] == pytest.approx(30, rel=0.02)
    assert out["macs_per_s"] == pytest.approx(out["tops"] * 1e12 / 2)
    assert main(["peak", "--bits", "4", "--json", "--set", "adc.rate_hz=40e6"]) == 0
    assert json.loads(capsys.readouterr().out)["tops"] == pytest.approx(2 * 11.8, rel=0.02)


def test_cli_text(capsys):
    assert main(["peak", "--bits", "4"]) == 0
    out = capsys.readouterr().out
    assert "TOPS/W" in out and "11.796 TOPS" in out


@pytest.mark.parametrize("argv,match", [
    (["--bits", "0"], "bits = 0"),
    (["--bits", "9"], "bits = 9"),
    (["--chip", "nope"], "unknown chip preset 'nope'"),
    (["--set", "adc.nope=1"], "has no field 'nope'"),
    (["--set", "adc.rate_hz=fast"], "cannot read 'fast'"),
    (["--set", "adc.rate_hz=-1"], "AdcConfig.rate_hz"),
])
def test_cli_bad_arguments_one_line_exit_2(argv, match, capsys):
    assert main(["peak", *argv]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


def test_console_script_subprocess():
    r = subprocess.run([sys.executable, "-m", "imcflow", "peak", "--bits", "9"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "bits = 9" in r.stderr
