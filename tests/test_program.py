"""Program IR: JSON round trip and verify on compiled programs."""

from __future__ import annotations

import dataclasses

import pytest

from imcflow.compiler import compile_qgraph
from imcflow.config.presets import TINY
from imcflow.errors import CompileError
from imcflow.ir.program import IN_PORT, OUT_PORT, Program, Route

from qgraph_factory import random_qgraph


def test_round_trip_equal_and_summary():
    prog = compile_qgraph(random_qgraph(11, TINY, head="gap"), TINY)
    again = Program.from_json(prog.to_json())
    assert again == prog
    assert again.chip == TINY
    text = str(again)
    assert "phase 0" in text and "objective throughput" in text


def test_verify_rejects_broken_route():
    prog = compile_qgraph(random_qgraph(12, TINY, head="gap"), TINY)
    ph = prog.phases[0]
    s = ph.streams[0]
    # replace the first stream's route by a jump between non-neighbours
    bad_routes = (Route(stream_id=s.stream_id, edges=((0, 3),)),) + tuple(r for r in ph.routes if r.stream_id != s.stream_id)
    bad = dataclasses.replace(prog, phases=(dataclasses.replace(ph, routes=bad_routes),) + prog.phases[1:])
    with pytest.raises(CompileError):
        bad.verify()


def test_verify_rejects_missing_node():
    prog = compile_qgraph(random_qgraph(13, TINY, head="gap"), TINY)
    ph = prog.phases[-1]
    bad = dataclasses.replace(prog, phases=prog.phases[:-1] + (dataclasses.replace(ph, nodes=ph.nodes[:-1]),))
    with pytest.raises(CompileError, match="computed in no phase"):
        bad.verify()


def test_ports_constants_distinct():
    assert IN_PORT != OUT_PORT and IN_PORT < 0 and OUT_PORT < 0


@pytest.mark.parametrize("text", ["garbage", "{}", "[1, 2]", '{"__dc__": "Program"}'])
def test_from_json_rejects_non_programs_with_a_typed_error(text, tmp_path):
    with pytest.raises(CompileError, match="prog.json"):
        Program.from_json(text, "prog.json")
    path = tmp_path / "bin.json"
    path.write_bytes(b"\x93NUMPY\xff\xfe")
    with pytest.raises(CompileError, match="bin.json"):
        Program.load(str(path))


def test_mapping_notes_say_what_routing_gave_up():
    """A phase routed with fewer copies than its balanced plan says so, in the Program (kept through
    JSON; older files without notes still load), its summary and the run report."""
    import json
    from types import SimpleNamespace

    from imcflow.compiler.pipeline import _copies_note
    from imcflow.ir.program import LayerCopy
    copies = (LayerCopy("a", 0, 2, 0, 8, 0, 4), LayerCopy("a", 1, 2, 8, 16, 0, 4), LayerCopy("b", 0, 1, 0, 4, 0, 4))
    note = _copies_note(3, {"a": 5, "b": 1}, SimpleNamespace(copies=copies))
    assert note == ["phase 3: the balanced copies did not route on the on-chip network; routed with fewer (a x5 -> x2)"]
    assert _copies_note(3, {"a": 2, "b": 1}, SimpleNamespace(copies=copies)) == []

    prog = dataclasses.replace(compile_qgraph(random_qgraph(11, TINY, head="gap"), TINY), mapping_notes=tuple(note))
    again = Program.from_json(prog.to_json())
    assert again.mapping_notes == tuple(note) and again == prog
    assert f"mapping: {note[0]}" in str(prog)
    old = json.loads(prog.to_json())
    del old["mapping_notes"]
    assert Program.from_json(json.dumps(old)).mapping_notes == ()
    from imcflow.report.flow import simulate_report
    assert f"compiler: {note[0]}" in simulate_report(prog, images=2).notes
