"""The import graph of src/mla_tune: no cycles, and each heavy dependency imported in its one home only.

Every ``import`` counts, at any depth (function-local ones too): a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "mla_tune"

# Modules that may import optuna: the study package, coordination and storages (and the CLI's log-level switch).
OPTUNA_HOMES = {
    "mla_tune._optuna_compat",  # Optuna's private names, used from here only
    "mla_tune.study.sampling",
    "mla_tune.study.trials",
    "mla_tune.study.objective",
    "mla_tune.study.confirm",
    "mla_tune.study.counts",
    "mla_tune.tables.summary",
    "mla_tune.coordination.claim",
    "mla_tune.coordination.heartbeat",
    "mla_tune.storage.urls",
    "mla_tune.storage.rdb",
    "mla_tune.parallel.workers",
    "mla_tune.cli",  # sets Optuna's log level
}


# Optuna's private names mla-tune needs; only _optuna_compat may name them.
OPTUNA_PRIVATE = {"_storage", "_study_id", "_trial_id", "_get_stale_trial_ids"}


# The package's layers, lowest first (the README's Layout states them). A module imports only from its own layer or a
# lower one, function-local imports included: a lazy import is still a dependency.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("values", ("mla_tune", "mla_tune.errors", "mla_tune.types", "mla_tune.records", "mla_tune.stats", "mla_tune.env",
                "mla_tune._yaml", "mla_tune.data", "mla_tune.paths", "mla_tune._optuna_compat")),
    ("grammar", ("mla_tune.batch_spec", "mla_tune.models", "mla_tune.workloads", "mla_tune.traffic",
                 "mla_tune.traffic_io")),
    ("knobs", ("mla_tune.knobs", "mla_tune.space", "mla_tune.space_auto")),
    ("recordings", ("mla_tune.recordings",)),
    ("vllm adapters", ("mla_tune.vllm_adapters",)),
    ("coordination", ("mla_tune.coordination",)),
    ("storage", ("mla_tune.storage",)),
    ("runners", ("mla_tune.runners",)),
    ("study", ("mla_tune.study",)),
    ("sweeps, parallel", ("mla_tune.sweep", "mla_tune.parallel")),
    ("tables", ("mla_tune.tables",)),
    ("serving", ("mla_tune.serving",)),
    ("prove", ("mla_tune.prove",)),
    ("views", ("mla_tune.views",)),
    ("api", ("mla_tune.api", "mla_tune.catalog")),
    ("cli", ("mla_tune.cli", "mla_tune.__main__")),
)


def layer_of(module: str) -> int | None:
    """The index in ``LAYERS`` of the most specific prefix naming ``module`` (None: no layer names it)."""
    best: tuple[int, int] | None = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            inside = module.startswith(p + ".") and p != PACKAGE  # the package itself (its __init__) is one module
            if (module == p or inside) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    return best[0] if best else None


def _is_gpu_home(module: str) -> bool:
    """Where torch and vllm may be imported: the vLLM runner, its private modules, the vLLM adapters."""
    parts = module.split(".")
    return (module == "mla_tune.runners.vllm"
            or (parts[:2] == ["mla_tune", "runners"] and len(parts) == 3 and parts[2].startswith("_vllm_"))
            or parts[:2] == ["mla_tune", "vllm_adapters"])


def _modules() -> dict[str, tuple[Path, list[str]]]:
    """Module name -> (file, the package its relative imports start from)."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
            package = parts
        else:
            package = parts[:-1]
        out[".".join(parts)] = (path, package)
    return out


def _imports(path: Path, package: list[str], known: set[str]) -> set[str]:
    """Every module ``path`` imports, relative imports resolved; ``from X import y`` counts X.y when it is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names if f"{name}.{alias.name}" in known)
    return found


@pytest.fixture(scope="module")
def imports() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(path, package, set(mods)) for name, (path, package) in mods.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_scan_sees_every_module_and_lazy_imports(imports):
    assert {"mla_tune.api", "mla_tune.runners", "mla_tune.runners.replay"} <= set(imports)
    assert "torch" in imports["mla_tune.runners._vllm_timing"]  # imported inside functions there


def test_find_cycle_reports_the_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles(imports):
    graph = {m: {d for d in deps if d in imports and d != m} for m, deps in imports.items()}
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_module_has_a_layer_and_imports_only_downwards(imports):
    """Packages form layers, not a loop: a module of one layer never imports one of a higher layer."""
    orphans = sorted(m for m in imports if layer_of(m) is None)
    assert not orphans, f"modules in no layer (add them to LAYERS): {orphans}"
    up = sorted(f"{m} ({LAYERS[layer_of(m)][0]}) -> {d} ({LAYERS[layer_of(d)][0]})"
                for m, deps in imports.items() for d in deps if d in imports and layer_of(d) > layer_of(m))
    assert not up, "imports against the layers: " + "; ".join(up)


def test_no_package_level_cycles(imports):
    """Collapsed to their packages (a top-level module is its own), the imports still form no cycle."""
    def package(m: str) -> str:
        parts = m.split(".")
        return ".".join(parts[:2]) if len(parts) > 1 and (SRC / parts[0] / parts[1]).is_dir() else m

    graph: dict[str, set[str]] = {}
    for m, deps in imports.items():
        for d in deps:
            if d in imports and package(d) != package(m):
                graph.setdefault(package(m), set()).add(package(d))
    cycle = _find_cycle(graph)
    assert cycle is None, "package import cycle: " + " -> ".join(cycle or [])


def test_the_layer_check_catches_an_upward_import():
    assert layer_of("mla_tune.runners.replay") < layer_of("mla_tune.study.plan")
    assert layer_of("mla_tune.vllm_adapters._patches") < layer_of("mla_tune.serving.profile")
    assert layer_of("mla_tune.something_new") is None


@pytest.mark.parametrize("dependency", ["torch", "vllm"])
def test_torch_and_vllm_only_in_the_gpu_runner_and_the_vllm_adapters(imports, dependency):
    bad = sorted(m for m, deps in imports.items()
                 if not _is_gpu_home(m) and any(d == dependency or d.startswith(dependency + ".") for d in deps))
    assert not bad, f"{dependency} imported outside runners/vllm.py, runners/_vllm_*.py and vllm_adapters/: {bad}"


def test_optuna_only_in_the_study_package_coordination_and_storage(imports):
    bad = sorted(m for m, deps in imports.items()
                 if m not in OPTUNA_HOMES and any(d == "optuna" or d.startswith("optuna.") for d in deps))
    assert not bad, f"optuna imported outside {sorted(OPTUNA_HOMES)}: {bad}"


def test_optuna_private_names_only_in_the_compat_module():
    bad = []
    for module, (path, _) in _modules().items():
        if module == "mla_tune._optuna_compat":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = node.attr if isinstance(node, ast.Attribute) else \
                node.name if isinstance(node, ast.FunctionDef) else \
                node.module if isinstance(node, ast.ImportFrom) and node.level == 0 else None
            private_module = name is not None and name.startswith("optuna.") and \
                any(part.startswith("_") for part in name.split("."))
            if name in OPTUNA_PRIVATE or private_module:
                bad.append(f"{module}:{node.lineno} {name}")
    assert not bad, f"Optuna private names outside mla_tune/_optuna_compat.py: {bad}"


def test_study_names_are_split_only_by_their_record():
    splits = ("split", "rsplit", "partition", "rpartition")
    bad = []
    for module, (path, _) in _modules().items():
        if module == "mla_tune.records":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in splits \
                    and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "/":
                bad.append(f"{module}:{node.lineno}")
    assert not bad, f'split on "/" outside records.StudyName (parse the name there): {bad}'


def test_files_the_code_cites_exist():
    """A comment or docstring that cites a file (``notes-0.21-0.33.md``) cites one the repository has."""
    import re

    root = SRC.parent
    have = {p.name for p in root.rglob("*.md")}
    for folder in ("src", "tests", "bench"):
        for path in sorted((root / folder).rglob("*")):
            if path.suffix not in (".py", ".sh"):
                continue
            for name in re.findall(r"[A-Za-z0-9_.-]+\.md\b", path.read_text()):
                assert name in have, f"{path.relative_to(root)} cites {name}, which the repository does not have"
