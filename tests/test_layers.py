"""The layer rules of the package, read from the source (every import, at module level or inside a
function; `if TYPE_CHECKING:` blocks are annotations only and do not count):

- nothing in `zs_llm/` imports `eval` or `recipes` (the library does not depend on its harness);
- `zs_llm/objective.py` imports only torch and the standard library (text and vision share it);
- `zs_llm/vision/` does not import the LLM methods, wrapper or loop;
- no import cycle among the modules of `zs_llm/`;
- the wrapper (`zs_llm/model.py`, and `generation.py`, its mixin) imports neither the loop (`adapt`) nor the pool's mechanics
  (`pool`) nor the library calls (`api`); the pool imports no loop;
- exactly one module holds the per-problem loop: a function that both generates and steps an
  optimizer (or runs a backward pass), counting what it reaches through its module's own functions;
- no class of the project's code runs over 300 lines, and no function over 60 (its docstring not
  counted) unless `LONG` states why.
"""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "zs_llm"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(path: Path) -> set[str]:
    """Absolute names of everything `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
            else:
                target = node.module or ""
            out.add(target)
            for a in node.names:  # `from . import come` imports the submodule
                out.add(f"{target}.{a.name}")
    return out


def package_graph() -> dict[str, set[str]]:
    mods = {module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in mods.items():
        deps = set()
        for imp in imports(path):
            # the longest known module the import names (a package's __init__ counts as a module)
            parts = imp.split(".")
            for k in range(len(parts), 0, -1):
                cand = ".".join(parts[:k])
                if cand in mods and cand != name:
                    deps.add(cand)
                    break
        graph[name] = deps
    return graph


def test_the_library_never_imports_the_harness_or_the_recipes():
    bad = {module_name(p): sorted(i for i in imports(p) if i.split(".")[0] in ("eval", "recipes", "bench", "studies"))
           for p in PKG.rglob("*.py")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_objective_module_imports_only_torch_and_the_standard_library():
    allowed = set(sys.stdlib_module_names) | {"torch"}
    found = {i.split(".")[0] for i in imports(PKG / "objective.py")}
    assert found <= allowed, found - allowed


def test_the_vision_path_does_not_import_the_llm_methods_wrapper_or_loop():
    llm = ("zs_llm.methods", "zs_llm.model", "zs_llm.adapt", "zs_llm.api", "zs_llm.guard", "zs_llm.loading")
    for p in (PKG / "vision").rglob("*.py"):
        bad = [i for i in imports(p) if i.startswith(llm)]
        assert not bad, (p.name, bad)


def test_no_import_cycle_in_the_package():
    graph = package_graph()
    # a package imports its own submodules (its __init__ re-exports them): not a cycle to report
    for name in graph:
        graph[name] = {d for d in graph[name] if not d.startswith(name + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_the_cycle_check_can_fail(tmp_path, monkeypatch):
    # the checker itself: two modules importing each other inside functions are reported
    pkg = tmp_path / "zs_llm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n")
    (pkg / "b.py").write_text("def g():\n    from . import a\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    try:
        test_no_import_cycle_in_the_package()
    except AssertionError as e:
        assert "zs_llm.a -> zs_llm.b -> zs_llm.a" in str(e)
    else:
        raise AssertionError("the cycle between a and b was not found")


#: module -> the zs_llm modules it must not import (a layer sees only what is below it)
BELOW = {"zs_llm.model": {"zs_llm.adapt", "zs_llm.pool", "zs_llm.api"},
         "zs_llm.generation": {"zs_llm.adapt", "zs_llm.pool", "zs_llm.api"},
         "zs_llm.pool": {"zs_llm.adapt", "zs_llm.api"}, "zs_llm.adapt": {"zs_llm.api"}}
#: calls that generate tokens, and calls that step an optimizer or run a backward pass
GENERATES = {"generate", "generate_ids", "generate_rows", "generate_texts", "generate_batches"}
STEPS = {"step", "backward"}


def test_the_wrapper_imports_neither_the_loop_nor_the_pool():
    graph = package_graph()
    found = {m: sorted(graph[m] & BELOW[m]) for m in BELOW}
    assert found == {m: [] for m in BELOW}


def called(node: ast.AST) -> set[str]:
    """The names of everything `node` calls: `f(...)` -> f, `x.f(...)` -> f."""
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            f = n.func
            out.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return out


def loop_functions(tree: ast.Module) -> list[str]:
    """The functions of a module that both generate and step, counting what they reach through
    the module's own functions (a loop split into phases is still one loop)."""
    funcs = {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    reach = {name: called(f) for name, f in funcs.items()}
    changed = True
    while changed:  # close over calls to the module's own functions
        changed = False
        for name in reach:
            more = set().union(*(reach[c] for c in reach[name] & funcs.keys()))
            if not more <= reach[name]:
                reach[name] |= more
                changed = True
    return sorted(n for n, r in reach.items() if r & GENERATES and r & STEPS)


def test_exactly_one_module_holds_the_per_problem_loop():
    holders = {}
    for p in sorted(PKG.rglob("*.py")):
        found = loop_functions(ast.parse(p.read_text(encoding="utf-8")))
        if found:
            holders[module_name(p)] = found
    assert list(holders) == ["zs_llm.adapt"], holders
    assert "adapt_round" in holders["zs_llm.adapt"]


def test_the_import_rule_can_fail(tmp_path, monkeypatch):
    # the checker itself: a wrapper importing the loop inside a function is reported
    pkg = tmp_path / "zs_llm"
    pkg.mkdir()
    for name in ("__init__", "adapt", "pool", "api", "generation"):
        (pkg / f"{name}.py").write_text("")
    (pkg / "model.py").write_text("def adapt_generate(self):\n    from .adapt import adapt_round\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    try:
        test_the_wrapper_imports_neither_the_loop_nor_the_pool()
    except AssertionError as e:
        assert "zs_llm.adapt" in str(e)
    else:
        raise AssertionError("model importing adapt was not found")


@pytest.mark.parametrize("source,loop", [
    ("def f(lm):\n    lm.generate_ids(x)\n    lm.optimizer.step()", ["f"]),
    ("def f(lm):\n    g(lm)\n    h(lm)\ndef g(lm):\n    lm.hf.generate()\ndef h(lm):\n    loss.backward()", ["f"]),
    ("def f(lm):\n    lm.generate_ids(x)\ndef g(lm):\n    lm.optimizer.step()", []),
    ("class P:\n    def run(self):\n        self.draft()\n        opt.step()\n    def draft(self):\n"
     "        generate_rows(x)", ["run"]),
    ("def f(lm):\n    return lm.encode(x)", []),
])
def test_the_loop_reader_follows_a_modules_own_calls(source, loop):
    assert loop_functions(ast.parse(source)) == loop


#: the project's code the size rules read
SIZED = ("zs_llm", "eval", "studies", "bench", "recipes", "scripts")
MAX_CLASS, MAX_FUNCTION = 300, 60
#: functions allowed over MAX_FUNCTION lines, and why
LONG = {
    "studies/vision_collapse.py::parse_args": "one add_argument per setting of the study, read as a list",
}


def _length(node: ast.AST) -> int:
    """A class's or function's lines, a function's docstring not counted."""
    n = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if not isinstance(node, ast.ClassDef) and isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
            and isinstance(first.value.value, str):
        n -= first.end_lineno - first.lineno + 1
    return n


def oversized(root: Path, allowed: dict = LONG) -> list[str]:
    """`path::name (lines)` of every class over MAX_CLASS lines and every function over MAX_FUNCTION
    lines that `allowed` does not name, under `root`'s SIZED folders."""
    out = []
    for folder in SIZED:
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef):
                    limit = MAX_CLASS
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    limit = MAX_FUNCTION
                else:
                    continue
                key, n = f"{rel}::{node.name}", _length(node)
                if n > limit and (limit == MAX_CLASS or key not in allowed):
                    out.append(f"{key} ({n} lines)")
    return out


def test_no_class_or_function_runs_long_without_a_reason():
    found = oversized(ROOT)
    assert not found, (f"over {MAX_CLASS} lines (a class) or {MAX_FUNCTION} (a function, docstring not counted): "
                       f"{found}; split it by concern, or add it to LONG with the reason")
    long_ones = {f.rsplit(" (", 1)[0] for f in oversized(ROOT, allowed={})}
    stale = [k for k in LONG if k not in long_ones]
    assert not stale, f"LONG names functions that are no longer long: {stale}; remove them"


def test_the_size_rule_can_fail(tmp_path):
    (tmp_path / "eval").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION - 1))  # with its def line: at the limit
    (tmp_path / "eval" / "m.py").write_text(f'def short():\n    """A docstring\n    of lines."""\n{body}\n\n'
                                            f"def long():\n    y = 0\n{body}\n\n"
                                            "class Big:\n" + "\n".join(f"    a{i} = {i}" for i in range(MAX_CLASS)))
    assert oversized(tmp_path) == [f"eval/m.py::long ({MAX_FUNCTION + 1} lines)",
                                   f"eval/m.py::Big ({MAX_CLASS + 1} lines)"]
