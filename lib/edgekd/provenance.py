"""What produced a result: the library source a stage uses, the pinned requirements, git and the machine.

A stage's *library digest* hashes the source of exactly the ``edgekd`` modules its notebook imports,
followed transitively through their own imports (top-level and inside functions alike), so a fix in
``losses.py`` marks training stale but leaves the robustness stage of a finished run fresh, and a
fix in ``reporting.py`` reruns only the aggregate.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from edgekd import info
from edgekd.files import file_digest

#: Source folder of the ``edgekd`` package.
LIB_DIR: Path = Path(__file__).resolve().parent
REQUIREMENTS: Path = info.REPO_ROOT / "requirements.txt"
PACKAGE: str = "edgekd"


def _imports(tree: ast.AST) -> set[str]:
    """``edgekd`` submodules named by the import statements anywhere in ``tree``."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != PACKAGE:
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from edgekd import data as D
                found.update(alias.name for alias in node.names)
    return found


def _stamp(lib_dir: Path) -> tuple:
    """Names, sizes and mtimes of the package's source files: a cache key that changes with any edit."""
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(Path(lib_dir).glob("*.py")))


def module_closure(roots: Iterable[str], lib_dir: Path = LIB_DIR) -> list[str]:
    """``roots`` and every ``edgekd`` module they import, transitively (sorted names, ``__init__`` included)."""
    return list(_closure(tuple(sorted(set(roots))), Path(lib_dir), _stamp(lib_dir)))


@lru_cache(maxsize=256)
def _closure(roots: tuple[str, ...], lib_dir: Path, stamp: tuple) -> tuple[str, ...]:
    seen: set[str] = {"__init__"}
    todo = [r for r in roots if r != "__init__"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = lib_dir / f"{name}.py"
        if not path.is_file():
            raise ValueError(f"edgekd module {name!r} not found in {lib_dir}")
        seen.add(name)
        todo.extend(_imports(ast.parse(path.read_text(), str(path))) - seen)
    return tuple(sorted(seen))


def notebook_modules(notebook: Path) -> list[str]:
    """``edgekd`` modules imported by a notebook's code cells (IPython magics and shell lines skipped)."""
    nb = json.loads(Path(notebook).read_text())
    found: set[str] = set()
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
        found |= _imports(ast.parse(code))
    return sorted(found)


def source_digest(modules: Iterable[str], lib_dir: Path = LIB_DIR) -> str:
    """sha256 (16 hex) over the names and bytes of ``modules``' source files."""
    h = hashlib.sha256()
    for name in sorted(modules):
        h.update(name.encode() + b"\0" + (lib_dir / f"{name}.py").read_bytes() + b"\0")
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
    """CPU model, cores, GPU (if any), OS and the versions of the packages that shape the numbers."""
    import numpy
    import onnxruntime
    import timm
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    cpu = getattr(torch.backends, "cpu", None)
    return {
        "cpu": cpu_model(),
        "cpu_capability": cpu.get_cpu_capability() if cpu is not None else None,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
