"""Issue 10's size limits, kept: no module of the package over 300 lines, no class over 200."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "xsupervise"
MAX_MODULE_LINES = 300
MAX_CLASS_LINES = 200


def test_no_module_over_300_lines_and_no_class_over_200() -> None:
    too_long = []
    for module in sorted(PACKAGE.glob("*.py")):
        text = module.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{module.name}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                length = node.end_lineno - node.lineno + 1
                if length > MAX_CLASS_LINES:
                    too_long.append(f"{module.name}: class {node.name}: {length} lines")
    assert not too_long, "split these: " + "; ".join(too_long)
