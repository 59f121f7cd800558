"""``husai.saes`` and ``husai.metrics`` must import with torch, numpy, scipy, pydantic and
safetensors alone (the GPU machine has no TransformerLens, SAELens, W&B or Ray)."""

import subprocess
import sys

HEAVY = ("transformer_lens", "sae_lens", "wandb", "ray", "pandas", "matplotlib")


def test_core_packages_import_without_the_heavy_stack() -> None:
    code = (
        "import sys\n"
        f"for name in {HEAVY!r}:\n"
        "    sys.modules[name] = None  # any import of these now fails\n"
        "import husai, husai.saes, husai.metrics, husai.config, husai.tasks, husai.model.fourier\n"
        "from husai.saes import train_group, load_sae, save_sae, evaluate\n"
        "from husai.metrics import pw_mcc, stability_pair\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def _import_graph() -> dict[str, set[str]]:
    """Our modules and the husai modules each imports, at any level (lazy imports too)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "src"
    files = {}
    for path in root.rglob("husai/**/*.py"):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        files[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("husai"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in files else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("husai")}
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def test_no_import_cycle_between_husai_modules() -> None:
    graph = _import_graph()
    assert "husai.metrics.baselines" in graph and len(graph) > 40
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join([*path, dep])
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
