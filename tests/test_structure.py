"""The library's shape: imports point down the pipeline (core < edge < stages < pipeline < paper), no cycle, no
import hidden in a function, and the paper and the edge path work with torch and the runner blocked."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from edgekd.core import config, info, provenance
from edgekd.pipeline import plan
from edgekd.stages import aggregate, efficiency, evaluate, export, robustness, train

LIB = Path(config.__file__).resolve().parents[1]
#: Each package's layer: a module imports only from its own package or a lower layer.
LAYERS: dict[str, int] = {"core": 0, "edge": 1, "stages": 2, "pipeline": 3, "paper": 4}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(LIB.rglob("*.py")):
        parts = path.relative_to(LIB.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imported(tree: ast.AST, modules: dict[str, Path]) -> set[str]:
    """``edgekd`` modules an AST imports (a ``from package import module`` names the module)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgekd"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
            found |= subs or ({node.module} & set(modules))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(ast.parse(path.read_text()), modules) - {name} for name, path in modules.items()}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_every_module_lives_in_a_pipeline_package():
    loose = [m for m in _modules() if m != "edgekd" and _layer(m) is None]
    assert loose == [], f"modules outside core/edge/stages/pipeline/paper: {loose}"


def test_imports_point_down_the_pipeline():
    upward = [f"{a} -> {b}" for a, targets in _graph().items() for b in targets
              if _layer(a) is not None and _layer(b) is not None and _layer(b) > _layer(a)]
    assert upward == []


def test_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_import_hides_inside_a_function():
    hidden = []
    for name, path in _modules().items():
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                hidden += [f"{name}.{fn.name}: {ast.unparse(n)}" for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert hidden == []


def test_the_graph_check_can_fail(tmp_path):
    """The checks above see a function-level import and an upward edge when there is one."""
    tree = ast.parse("def f():\n    from edgekd.pipeline import runner\n")
    assert _imported(tree, _modules()) == {"edgekd.pipeline.runner"}
    assert _layer("edgekd.core.info") < _layer("edgekd.pipeline.runner")


BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = ("torch", "torchvision", "timm", "medmnist", "medmnistc", "pytorch_grad_cam", "edgekd.pipeline.runner",
               "edgekd.stages")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"blocked: {name}")
            return None

    sys.meta_path.insert(0, Block())
""")


def _run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, cwd=info.REPO_ROOT)


def test_the_blocker_blocks():
    res = _run_blocked("import edgekd.stages.train")
    assert res.returncode != 0 and "blocked: " in res.stderr


def test_paper_and_edge_work_without_torch_or_the_runner():
    """Import every paper, edge and torch-free pipeline module, expand a profile, build the manuscript's tables
    from the published reference and open the edge CLI, with torch, the stages and the runner blocked."""
    res = _run_blocked("""
        import sys
        from edgekd.paper import closing, format, front, methods, render, results, shared, sources, supplement
        from edgekd.edge import predict
        from edgekd.pipeline import plan, publish, reproduce
        specs = plan.expand(plan.load_profile("smoke"), plan.info.REPO_ROOT / "outputs")
        assert {s.stage for s in specs} == set(plan.STAGES), sorted({s.stage for s in specs})
        src = sources.locate("default")
        assert src.numbers, src
        tables = [fn(src) for fn in (supplement.performance, results.paired, supplement.calibration, supplement.robustness,
                                     results.int8, supplement.pareto, supplement.provenance_tables, supplement.reproduction)]
        assert all(len(t) > 50 for t in tables), tables
        meta, nb = render.split_qmd((plan.info.REPO_ROOT / "paper" / "index.qmd").read_text())
        shown = []
        scope = {"__name__": "paper"}
        import IPython.display
        IPython.display.display = lambda *a, **k: shown.append(a)
        for cell in nb.cells:
            if cell.cell_type == "code":
                exec(cell.source, scope)  # the article's own code, as the renderer's kernel runs it
        assert len(shown) > 30, len(shown)
        try:
            predict.main(["--help"])
        except SystemExit as exc:
            assert exc.code == 0
        assert "torch" not in sys.modules
        print("ok", len(specs))
    """)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.splitlines()[-1].startswith("ok ")


def test_stage_table_defaults_are_the_configs():
    """Each stage with parameters reads them, and their defaults, from one typed configuration."""
    assert list(plan.STAGES) == ["data", "teacher", "student", "export", "evaluate", "robustness", "efficiency", "aggregate"]
    assert {s.name for s in plan.STAGES.values() if s.trains} == {"teacher", "student"}
    assert [s.name for s in plan.STAGES.values() if s.timed] == ["efficiency"]
    for stage in plan.STAGES.values():
        assert (info.REPO_ROOT / "notebooks" / stage.notebook).is_file()
        if stage.defaults is not None:
            assert config.STAGE_OF[stage.defaults] == stage.name
    assert config.EfficiencyConfig().repeats == 100 and config.EvaluateConfig().n_resamples == 1000


@pytest.mark.parametrize("block, message", [
    ({"efficiency": {"repeats": 0}}, "efficiency: repeats must be >= 1"),
    ({"evaluate": {"n_resamples": 2.5}}, "evaluate: n_resamples must be an integer"),
    ({"export": {"coverage": 1.5}}, "export: coverage must lie in (0, 1]"),
    ({"robustness": {"suites": ["nope"]}}, "robustness: unknown suite 'nope'"),
    ({"evaluate": {"bins": 3}}, "evaluate: unknown keys ['bins']"),
])
def test_stage_blocks_are_checked_by_their_config(block, message):
    prof = {**plan.load_profile("smoke"), **block}
    with pytest.raises(plan.ConfigError) as exc:
        plan.expand(prof, info.REPO_ROOT / "outputs")
    assert str(exc.value).startswith(message)


def test_architecture_doc_lists_every_package_and_module():
    text = (info.REPO_ROOT / "docs" / "architecture.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    first_words = {line.split()[0] for line in block.splitlines() if line.strip()}
    missing = [f"{path.parent.name}/{path.stem}" for path in LIB.glob("*/*.py")
               if path.stem != "__init__" and path.stem not in first_words]
    missing += [f"{package}/" for package in LAYERS if f"{package}/" not in first_words]
    assert missing == [], f"docs/architecture.md's Layout lacks {missing}"


def test_stage_entry_points_share_one_verb_order():
    for stage, module in {"train": train, "evaluate": evaluate, "robustness": robustness, "efficiency": efficiency,
                          "export": export, "aggregate": aggregate}.items():
        assert callable(getattr(module, f"run_{stage}", None)), f"edgekd.stages.{stage} has no run_{stage}"


def test_one_alias_per_module():
    """``from edgekd.<package> import <module> as <alias>`` uses one alias per module and one module per alias,
    across the library, tests, scripts, notebooks and the manuscript."""
    pattern = re.compile(r"from (edgekd(?:\.[a-z]+)?) import ([a-z_]+) as ([A-Za-z_]+)")
    seen: dict[str, set[str]] = {}
    for path in [*LIB.rglob("*.py"), *(info.REPO_ROOT / "tests").glob("*.py"), *(info.REPO_ROOT / "scripts").glob("*.py"),
                 *(info.REPO_ROOT / "notebooks").glob("*.ipynb"), info.REPO_ROOT / "paper" / "index.qmd"]:
        for package, module, alias in pattern.findall(path.read_text()):
            seen.setdefault(f"{package}.{module}", set()).add(alias)
    assert {m: a for m, a in seen.items() if len(a) > 1} == {}
    aliases = [a for names in seen.values() for a in names]
    assert sorted({a for a in aliases if aliases.count(a) > 1}) == []


def test_presentation_modules_stay_out_of_what_a_stage_computes():
    """The library digests leave out the display and demo helpers (provenance.PRESENTATION). That is right only while
    no library module imports them (a stage's result cannot then run through them) and every parameter a notebook
    takes from the demo is one the runner sets for each of its runs (the demo's value is then never used)."""
    presentation = {f"edgekd.{m}" for m in provenance.PRESENTATION}
    assert presentation <= set(_modules())
    importers = sorted(name for name, targets in _graph().items() if targets & presentation)
    assert importers == []
    for profile in ("smoke", "default"):
        specs = plan.expand(plan.load_profile(profile), info.REPO_ROOT / "outputs")
        for stage in plan.STAGES.values():
            nb = nbformat.read(info.REPO_ROOT / "notebooks" / stage.notebook, as_version=4)
            cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
            from_demo = {t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)
                         and any(isinstance(n, ast.Name) and n.id == "DM" for n in ast.walk(node.value))
                         for t in node.targets if isinstance(t, ast.Name)}
            assert from_demo, stage.name  # every stage notebook's demo reads its defaults from the demo module
            for spec in (s for s in specs if s.stage == stage.name):
                assert from_demo <= set(spec.parameters), (profile, spec.key, from_demo - set(spec.parameters))


def test_the_presentation_check_sees_an_importer(tmp_path):
    tree = ast.parse("from edgekd.stages import show\n")
    assert _imported(tree, _modules()) == {"edgekd.stages.show"}
