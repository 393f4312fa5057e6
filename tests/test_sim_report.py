"""Reports from the event simulation: consistency, JSON, and that chip changes move throughput the
right way (doubling the ADC rate, halving the weight bus, removing cores)."""

import dataclasses
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from qgraph_factory import random_qgraph  # noqa: E402

from imcflow.config import TINY  # noqa: E402
from imcflow.errors import SimError  # noqa: E402
from imcflow.ir.report import Report  # noqa: E402
from imcflow.report.tables import format_report  # noqa: E402
from imcflow.sim.report import make_report, simulate_timing  # noqa: E402

compile_qgraph = pytest.importorskip("imcflow.compiler.pipeline").compile_qgraph


def _report(prog, images=6):
    return make_report(prog, simulate_timing(prog, images=images))


@pytest.fixture(scope="module")
def one_phase():
    return compile_qgraph(random_qgraph(0, TINY), TINY)


@pytest.fixture(scope="module")
def multi_phase():
    prog = compile_qgraph(random_qgraph(2, TINY), TINY)
    assert len(prog.phases) > 1
    return prog


def test_report_is_consistent_and_round_trips(one_phase):
    r = _report(one_phase)
    r.verify()
    assert r.power_w == pytest.approx(r.energy_per_img_j * r.throughput_img_s)
    assert r.img_per_s_per_w == pytest.approx(1 / r.energy_per_img_j)
    assert sum(r.energy_breakdown_j_per_img.values()) == pytest.approx(r.energy_per_img_j)
    assert 0 < r.utilization <= 1 and r.tops > 0 and r.latency_s >= 1 / r.throughput_img_s * 0.5
    assert r.macs_per_img == sum(l.macs_per_img for l in r.layers)
    assert Report.from_json(r.to_json()) == r
    text = format_report(r)
    assert "img/s" in text and "core" in text


def test_core_time_adds_up(one_phase):
    tr = simulate_timing(one_phase, images=4)
    for t in tr.timelines:
        total = t.busy_s + t.load_s + t.wait_input_s + t.wait_output_s + t.idle_s
        assert total == pytest.approx(tr.run_time_s, rel=1e-9, abs=1e-12)


def test_phase_reports_add_up_to_the_run(multi_phase):
    tr = simulate_timing(multi_phase, images=4)
    r = make_report(multi_phase, tr)
    assert [p.index for p in r.phases] == list(range(len(multi_phase.phases)))
    assert sum(p.time_s for p in r.phases) == pytest.approx(tr.run_time_s, rel=1e-9)
    for p, ph in zip(r.phases, multi_phase.phases):
        assert p.nodes == ph.nodes and 1 <= p.cores <= multi_phase.chip.n_cores
        assert all(0 <= v <= 1 for v in (p.array_share, p.io_in_share, p.io_out_share, p.load_share))
        assert p.array_share > 0   # every phase evaluates some tile
    # The array share is the compute time of the phase's ops over its cores and time.
    busy = sum(op.duration_s for op in tr.lowered.ops if op.phase == 0 and op.kind.value == "compute")
    assert r.phases[0].array_share == pytest.approx(busy / (r.phases[0].cores * r.phases[0].time_s))
    assert Report.from_json(r.to_json()) == r
    assert "phase" in format_report(r)


def test_verify_rejects_inconsistent_report(one_phase):
    r = _report(one_phase)
    with pytest.raises(SimError):
        dataclasses.replace(r, power_w=r.power_w * 2).verify()
    with pytest.raises(SimError):
        dataclasses.replace(r, utilization=1.5).verify()


def _with_chip(prog, **sections):
    chip = prog.chip
    for name, kw in sections.items():
        chip = dataclasses.replace(chip, **{name: dataclasses.replace(getattr(chip, name), **kw)})
    return dataclasses.replace(prog, chip=chip)


@pytest.mark.parametrize("fixture", ["one_phase", "multi_phase"])
def test_faster_adc_raises_throughput(fixture, request):
    prog = request.getfixturevalue(fixture)
    base = _report(prog).throughput_img_s
    fast = _report(_with_chip(prog, adc={"rate_hz": 2 * prog.chip.adc.rate_hz})).throughput_img_s
    assert fast > base * 1.2


def test_narrower_weight_bus_lowers_throughput_of_a_phased_program(multi_phase):
    base = _report(multi_phase).throughput_img_s
    slow = _report(_with_chip(multi_phase, weight_load={"bus_bits": multi_phase.chip.weight_load.bus_bits // 2}))
    assert slow.throughput_img_s < base


def test_fewer_cores_lower_throughput():
    q = random_qgraph(0, TINY)
    base = _report(compile_qgraph(q, TINY)).throughput_img_s
    small = dataclasses.replace(TINY, grid_rows=1)
    try:
        prog = compile_qgraph(q, small)
    except Exception as exc:  # the compiler may refuse: that is also "less throughput"
        pytest.skip(f"2-core chip cannot hold the network: {exc}")
    assert _report(prog).throughput_img_s < base


def test_run_cli_writes_a_report(tmp_path, capsys):
    from imcflow.cli import main
    out = tmp_path / "r.json"
    assert main(["run", "cnn-tiny", "--chip", "tiny", "--untrained", "--json", str(out)]) == 0
    r = Report.from_json(out.read_text())
    r.verify()
    assert r.network == "cnn-tiny" and r.throughput_img_s > 0
    assert "img/s/W" in capsys.readouterr().out
