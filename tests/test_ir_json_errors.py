"""Every IR value's from_json turns foreign text into its stage's typed error, never a raw decode error."""

import pytest

from imcflow.errors import CompileError, ModelError, QuantError, SimError
from imcflow.ir.graph import Graph
from imcflow.ir.program import Program
from imcflow.ir.qgraph import QGraph
from imcflow.ir.report import Report

CASES = [(Graph, ModelError), (QGraph, QuantError), (Program, CompileError), (Report, SimError)]


@pytest.mark.parametrize("cls,error", CASES, ids=[c.__name__ for c, _ in CASES])
@pytest.mark.parametrize("text", ["", "{}", "not json", '{"__dc__": "Other"}', "[1, 2]"])
def test_foreign_json_is_a_typed_error(cls, error, text):
    with pytest.raises(error, match=cls.__name__):
        cls.from_json(text)
