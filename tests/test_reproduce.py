"""``imcflow reproduce``: peak rows computed from the config, missing pieces reported, JSON written."""

import json

import pytest

from imcflow.cli import main
from imcflow.config import JSSC2022
from imcflow.report import reproduce as rp
from imcflow.report.tables import Row, format_rows


def test_peak_rows_match_the_paper():
    rep = rp.Reproduction()
    rep.add("peak TOPS, 8-b", "peak_tops_8b", "TOPS", lambda: rp._peak_tops(JSSC2022, 8))
    rep.add("peak TOPS, 4-b", "peak_tops_4b", "TOPS", lambda: rp._peak_tops(JSSC2022, 4))
    rep.add("peak TOPS/W", "peak_tops_per_w_8b", "TOPS/W", lambda: rp._peak_tops_per_w(JSSC2022, 8))
    for row in rep.rows:
        assert row.ratio == pytest.approx(1.0, abs=0.01), row


def test_missing_piece_says_not_yet_available():
    rep = rp.Reproduction()

    def missing():
        return rp.need("imcflow.no_such_module", "thing")

    rep.add("something", "cifar10_img_s", "img/s", missing)
    assert rep.rows[0].value is None and rep.rows[0].note.startswith("not yet available")
    assert "not yet available" in format_rows(rep.rows)


def test_ratio_and_table():
    r = Row("x", 100.0, 90.0, "img/s")
    assert r.ratio == pytest.approx(0.9)
    assert "0.900" in format_rows([r])


def test_cli_writes_json_without_benchmarks(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rp, "_benchmark_rows", lambda *a, **k: None)
    out = tmp_path / "r.json"
    assert main(["reproduce", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "peak TOPS, 8-b" in text and "ImageNet" in text
    data = json.loads(out.read_text())
    assert any(r["figure"].startswith("peak TOPS, 4-b") and r["ratio"] for r in data["rows"])


@pytest.mark.slow
def test_full_reproduce_runs(tmp_path):
    out = tmp_path / "r.json"
    assert main(["reproduce", "--json", str(out)]) == 0
    rows = {r["figure"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["CIFAR-10 CNN img/s"]["imcflow"] is not None


def test_power_row_is_throughput_over_efficiency(monkeypatch):
    """The chip-power row: imcflow's img/s / (img/s/W) next to the published ratio (151.7 mW for CIFAR-10)."""
    from types import SimpleNamespace

    fake = SimpleNamespace(throughput_img_s=9000.0, img_per_s_per_w=45000.0, power_w=9000.0 / 45000.0, features={},
                           layers=[])
    monkeypatch.setattr(rp, "need", lambda module, attr: (lambda *a, **k: {"base": fake}))
    rep = rp.Reproduction()
    rp._benchmark_rows(rep, JSSC2022, "cifar10-cnn11", "cifar10", "CIFAR-10 CNN", None)
    row = {r.figure: r for r in rep.rows}["CIFAR-10 CNN chip power"]
    assert row.value == pytest.approx(200.0) and row.published == pytest.approx(1e3 * 7815 / 51500)
    assert row.ratio == pytest.approx(200.0 / (1e3 * 7815 / 51500))
