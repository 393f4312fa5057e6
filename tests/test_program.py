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
