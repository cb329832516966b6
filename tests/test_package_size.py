"""Size limits of the package: no module over 400 lines, no function over 60 (its docstring included)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llama2_et"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def function_lengths(path: Path, root: Path = PACKAGE.parent) -> dict[str, int]:
    """'llama2_et/module.py:Class.function' -> lines from its def to its last line, for every function."""
    where = path.relative_to(root).as_posix()
    lengths = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lengths[f"{where}:{name}"] = child.end_lineno - child.lineno + 1
                name += "."
            visit(child, name)

    visit(ast.parse(path.read_text(encoding="utf-8")), "")
    return lengths


def test_no_module_is_over_400_lines():
    lines = {p.relative_to(PACKAGE.parent).as_posix(): len(p.read_text().splitlines()) for p in modules()}
    too_long = [f"{name} ({n} lines)" for name, n in lines.items() if n > MAX_MODULE_LINES]
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {', '.join(too_long)}; split them by job"


def test_no_function_is_over_60_lines():
    lengths = {name: n for p in modules() for name, n in function_lengths(p).items()}
    too_long = [f"{name} ({n} lines)" for name, n in lengths.items() if n > MAX_FUNCTION_LINES]
    assert not too_long, (
        f"functions over {MAX_FUNCTION_LINES} lines: {', '.join(too_long)}; split them into named steps"
    )


def test_the_size_check_sees_nested_functions_and_methods(tmp_path):
    module = tmp_path / "probe.py"
    module.write_text("class A:\n    def f(self):\n        def g():\n            pass\n        return g\n")
    assert function_lengths(module, tmp_path) == {"probe.py:A.f": 4, "probe.py:A.f.g": 2}
