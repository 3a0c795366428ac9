"""The layout's rules, checked on the source: no import circle, small files and functions, one
source of each model default (its YAML), and no measured figures in the model YAMLs."""
from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
import yaml

from recmovie.models.base import model_class
from tests.conftest import REPO

PACKAGE = REPO / "recmovie"
CONF_MODELS = sorted((REPO / "conf" / "model").glob("*.yaml"))
# functions whose length is their order of operations (a generator's draws, kept in one place so
# that the same seed gives the same data): named here with the reason
LONG_FUNCTIONS = {"generate_synthetic": "the order of the random draws is the data: one function keeps it"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each recmovie module -> the recmovie modules it imports anywhere (function-level imports too)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                deps |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    graph = import_graph()
    assert "recmovie.pipeline" in graph and graph["recmovie.pipeline"]
    assert cycles(graph) == []


def test_the_circle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_files_and_functions_stay_small():
    long_files, long_functions = [], []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > 400:
            long_files.append(f"{path.relative_to(REPO)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in LONG_FUNCTIONS:
                length = node.end_lineno - node.lineno + 1
                if length > 50:
                    long_functions.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {length} lines")
    assert long_files == [] and long_functions == []


def class_defaults(cls: type) -> dict:
    """Keyword defaults of the constructor and of the bases it passes its arguments on to."""
    out = {}
    for c in reversed(cls.__mro__):
        if "__init__" in vars(c):
            for name, p in inspect.signature(c.__init__).parameters.items():
                if p.default is not inspect.Parameter.empty:
                    out[name] = list(p.default) if isinstance(p.default, tuple) else p.default
    return out


def model_yamls() -> dict[str, dict]:
    return {p.stem: yaml.safe_load(p.read_text()) for p in CONF_MODELS}


def test_every_model_yaml_names_itself_and_its_class_takes_every_key():
    for stem, spec in model_yamls().items():
        assert spec["name"] == stem
        cls = model_class(spec["_target_"])
        params = {n for c in cls.__mro__ if "__init__" in vars(c) for n in inspect.signature(c.__init__).parameters}
        assert set(spec) - {"_target_", "name", "tune", "tune_extend"} <= params, stem


@pytest.mark.parametrize("path", CONF_MODELS, ids=lambda p: p.stem)
def test_a_python_default_never_disagrees_with_a_yaml(path):
    """The YAML holds a model's defaults; a constructor default for the same key must be the same
    value (models built in code get what `model=<name>` gets), and where YAMLs that share a class
    set a key differently (presets such as dae and multidae), the class has no default for it."""
    spec = yaml.safe_load(path.read_text())
    defaults = class_defaults(model_class(spec["_target_"]))
    conflicts = {key: (value, defaults[key]) for key, value in spec.items()
                 if key in defaults and defaults[key] != value and not (isinstance(value, float) and defaults[key] == value)}
    assert conflicts == {}, f"{path.name}: YAML value vs Python default {conflicts}"


FIGURE = re.compile(r"\b0\.\d{3,}\b")


@pytest.mark.parametrize("path", CONF_MODELS, ids=lambda p: p.stem)
def test_model_yamls_quote_no_measured_figures(path):
    """Measured figures live in benchmarks/RESULTS.md; a YAML says why, and points there."""
    comments = " ".join(line.split("#", 1)[1] for line in path.read_text().splitlines() if "#" in line)
    assert not FIGURE.findall(comments), f"{path.name} quotes {FIGURE.findall(comments)}"
