"""What produced a result: the library source a stage uses, the pinned requirements, git and the machine.

A stage's *library digest* hashes the source of exactly the ``edgekd`` modules its notebook imports,
followed transitively through their own imports (and the packages that hold them), so a fix in
``core/losses.py`` marks training stale but leaves the robustness stage of a finished run fresh, and a
fix in ``stages/tables.py`` reruns only the aggregate. The display and demo helpers every notebook imports
(:data:`PRESENTATION`) are not part of any digest.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from edgekd.core import info
from edgekd.core.files import file_digest

#: Modules a notebook imports only to show what a stage made, or for the defaults of its standalone demo (which the
#: runner's parameters replace): nothing they hold reaches a stage's result, and no library module imports them
#: (tests/test_structure.py checks both), so a stage's library digest leaves them out. An edit to how a table is shown
#: or to the demo's recipe then keeps every finished run fresh instead of costing the whole main job.
PRESENTATION: frozenset[str] = frozenset({"stages.show", "stages.demo"})
#: Source folder of the ``edgekd`` package.
LIB_DIR: Path = Path(__file__).resolve().parents[1]
REQUIREMENTS: Path = info.REPO_ROOT / "requirements.txt"
PACKAGE: str = "edgekd"


def _path(name: str, lib_dir: Path) -> Path:
    """Source file of the ``edgekd`` module ``name`` (dotted below the package: ``core.info``; a package is its
    ``__init__.py``; ``__init__`` is the package's own)."""
    if name == "__init__":
        return lib_dir / "__init__.py"
    base = lib_dir.joinpath(*name.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _imports(tree: ast.AST, lib_dir: Path) -> set[str]:
    """``edgekd`` modules (dotted below the package) named by the import statements anywhere in ``tree``,
    with the packages that hold them."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != PACKAGE or len(parts) < 2:
                continue
            dotted = ".".join(parts[1:])
            if _path(dotted, lib_dir).is_file():  # from edgekd.core import info: the module; from edgekd.core.files import remove: not
                found.update(".".join(parts[1:k]) for k in range(2, len(parts) + 1))
    return found


def _stamp(lib_dir: Path) -> tuple:
    """Paths, sizes and mtimes of the package's source files: a cache key that changes with any edit."""
    return tuple((str(p.relative_to(lib_dir)), p.stat().st_size, p.stat().st_mtime_ns)
                 for p in sorted(Path(lib_dir).rglob("*.py")))


def module_closure(roots: Iterable[str], lib_dir: Path = LIB_DIR) -> list[str]:
    """``roots`` and every ``edgekd`` module they import, transitively (sorted dotted names, the packages'
    ``__init__`` included)."""
    return list(_closure(tuple(sorted(set(roots))), Path(lib_dir), _stamp(lib_dir)))


@lru_cache(maxsize=256)
def _closure(roots: tuple[str, ...], lib_dir: Path, stamp: tuple) -> tuple[str, ...]:
    seen: set[str] = {"__init__"}
    todo = [r for r in roots if r != "__init__"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _path(name, lib_dir)
        if not path.is_file():
            raise ValueError(f"edgekd module {name!r} not found in {lib_dir}")
        seen.add(name)
        parents = {".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)}
        todo.extend((_imports(ast.parse(path.read_text(), str(path)), lib_dir) | parents) - seen)
    return tuple(sorted(seen))


def notebook_modules(notebook: Path) -> list[str]:
    """``edgekd`` modules imported by a notebook's code cells (IPython magics and shell lines skipped), less the
    :data:`PRESENTATION` modules: what the stage's result can depend on."""
    nb = json.loads(Path(notebook).read_text())
    found: set[str] = set()
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
        found |= _imports(ast.parse(code), LIB_DIR)
    return sorted(found - PRESENTATION)


def source_digest(modules: Iterable[str], lib_dir: Path = LIB_DIR) -> str:
    """sha256 (16 hex) over the names and bytes of ``modules``' source files."""
    h = hashlib.sha256()
    for name in sorted(modules):
        h.update(name.encode() + b"\0" + _path(name, lib_dir).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def library_digest(roots: Iterable[str], lib_dir: Path = LIB_DIR) -> str:
    """:func:`source_digest` of :func:`module_closure` of ``roots``."""
    return source_digest(module_closure(roots, lib_dir), lib_dir)


def requirements_digest(path: Path = REQUIREMENTS) -> str:
    """sha256 (16 hex) of the pinned requirements."""
    return file_digest(path)[:16]


def git_commit(repo: Path = info.REPO_ROOT) -> dict[str, str | bool | None]:
    """HEAD commit of ``repo`` and whether tracked files differ from it (None where git is unavailable).

    Read-only: ``GIT_OPTIONAL_LOCKS=0`` keeps ``git status`` from refreshing and rewriting ``.git/index``
    (``git diff`` rewrites it even then, as of git 2.39, so it is not used).
    """
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, env=env, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, env=env,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """CPU model, cores, GPU (if any), OS and the versions of the packages that shape the numbers.

    This module never imports torch (the paper and the edge path use it): where this process has imported
    it (every stage's process) the torch facts come from torch itself, as ever; elsewhere the versions come
    from the installed distributions (torch's without its local tag, such as ``+cu130``) and the GPU, CPU
    capability and threads are None.
    """
    torch = sys.modules.get("torch")
    gpu = torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else None
    cpu = getattr(torch.backends, "cpu", None) if torch is not None else None
    return {
        "cpu": cpu_model(),
        "cpu_capability": cpu.get_cpu_capability() if cpu is not None else None,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__ if torch is not None else _version("torch"),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "timm": _version("timm"),
        "numpy": _version("numpy"),
        "onnxruntime": _version("onnxruntime"),
    }


def _version(package: str) -> str | None:
    """The installed version of ``package`` (None where it is missing)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
