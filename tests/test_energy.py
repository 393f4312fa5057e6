"""Energy accounting: prices times counts, and the fitted peak efficiency."""

import dataclasses

import pytest

from imcflow.config import JSSC2022, TINY
from imcflow.config.peak import peak
from imcflow.sim.energy import EventCounts, dynamic_energy_j, energy_breakdown_j, mvm_counts


def test_column_eval_j_is_fitted_to_30_tops_per_w_at_8b():
    assert peak(JSSC2022, 8).tops_per_w == pytest.approx(30.0, rel=1e-3)


def test_every_energy_constant_is_documented_with_a_source_or_fit():
    import inspect
    src = inspect.getsource(type(JSSC2022.energy))
    for f in dataclasses.fields(JSSC2022.energy):
        doc = src.split(f"    {f.name}:", 1)[1].split('"""', 2)[1]
        assert "[A" in doc or "[P" in doc, f.name
        assert len(doc) > 40, f"{f.name}: say where the value comes from"


def test_prices_times_counts():
    table = dataclasses.replace(JSSC2022.energy, static_w=0.5)
    c = EventCounts(column_evals=10, simd_ops=3, ocn_bit_hops=7, control_cycles=2)
    e = energy_breakdown_j(c, table, time_s=2.0)
    assert e["column_eval"] == pytest.approx(10 * table.column_eval_j)
    assert e["simd"] == pytest.approx(3 * table.simd_op_j)
    assert e["ocn"] == pytest.approx(7 * table.ocn_bit_hop_j)
    assert e["control"] == pytest.approx(2 * table.control_cycle_j)
    assert e["static"] == 1.0


def test_counts_add_and_scale():
    a = mvm_counts(TINY, rows=72, cols=32, x_bits=4, vectors=3, row_density=0.5)
    assert a.column_evals == 3 * 4 * 32 and a.rows_driven == 3 * 4 * 72 * 0.5
    b = (a + a).scaled(0.5)
    assert b == a
    assert sum(dynamic_energy_j(a + a, JSSC2022.energy).values()) == pytest.approx(
        2 * sum(dynamic_energy_j(a, JSSC2022.energy).values()))
