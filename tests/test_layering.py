"""The flow's stages import ir/, config/, errors and cima/ (shared chip arithmetic), never each other.

Glue that crosses stages lives in imcflow/pipeline.py, imcflow/train/ and imcflow/cli/.
"""

import ast
import pathlib

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "imcflow"
STAGES = ("frontend", "quant", "compiler", "sim")


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_stages_do_not_import_each_other():
    offenders = []
    for stage in STAGES:
        for path in (SRC / stage).rglob("*.py"):
            for name in _imports(path):
                parts = name.split(".")
                if parts[0] == "imcflow" and len(parts) > 1 and parts[1] in STAGES and parts[1] != stage:
                    offenders.append(f"{path.relative_to(SRC)} imports {name}")
    assert not offenders, "stage boundary crossed:\n" + "\n".join(offenders)


def test_ir_and_config_import_no_stage():
    offenders = []
    for pkg in ("ir", "config", "cima"):
        for path in (SRC / pkg).rglob("*.py"):
            for name in _imports(path):
                parts = name.split(".")
                if parts[0] == "imcflow" and len(parts) > 1 and parts[1] in STAGES:
                    offenders.append(f"{path.relative_to(SRC)} imports {name}")
    assert not offenders, "\n".join(offenders)
