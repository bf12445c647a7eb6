"""The house's arrows: ``pipelines`` builds on ``dali_cutmix``, ``dali_cutmix_trainer`` (the
trainer's body) and ``dali_cutmix_bench`` (the profiler) on both, the scripts on all; nothing
imports ``train.py``, which imports nothing heavy itself;
no import circle between the project's modules, counting imports inside functions too."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dali_cutmix", "pipelines", "dali_cutmix_trainer", "dali_cutmix_bench")
# What each package may import from the project.
ALLOWED = {
    "dali_cutmix": {"dali_cutmix"},
    "pipelines": {"dali_cutmix", "pipelines"},
    "dali_cutmix_trainer": {"dali_cutmix", "pipelines", "dali_cutmix_trainer"},
    "dali_cutmix_bench": {"dali_cutmix", "pipelines", "dali_cutmix_trainer", "dali_cutmix_bench"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """The project modules ``path`` imports, anywhere in it (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t.split(".")[0] in PACKAGES + ("train",)}
    return found


def modules() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    files += [
        ROOT / "train.py",
        ROOT / "study.py",
        *(ROOT / "scripts").glob("*.py"),
    ]
    graph = {module_name(p): project_imports(p) for p in files}
    return {m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}


def test_imports_point_one_way_and_nothing_imports_train():
    for module, targets in modules().items():
        top = module.split(".")[0]
        for target in targets:
            assert target != "train", f"{module} imports train.py"
            if top in ALLOWED:
                assert target.split(".")[0] in ALLOWED[top], f"{module} imports {target}, a package above it"


def test_no_import_circles():
    graph = modules()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):  # a package importing its own submodule (lazy names) is no circle
                continue
            assert state.get(nxt) != 1, "import circle: " + " -> ".join(path + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_train_py_loads_neither_torch_nor_dali_on_import():
    """Python's fork server imports ``__main__`` again in each worker of the bad-file check: under
    ``train.py`` those workers stay light only if importing it loads nothing heavy."""
    heavy = ("torch", "nvidia.dali", "dali_cutmix_trainer.run")
    code = f"import sys, train; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_lazy_name_of_the_packages_loads():
    """The names the package ``__init__``s load on first use all exist where they point."""
    code = "import dali_cutmix, pipelines; [getattr(m, n) for m in (dali_cutmix, pipelines) for n in m.__all__]"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
