"""The library never pulls in the search stack: importing cxr or any module of it loads neither ray nor optuna."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cxr

CXR_DIR = Path(cxr.__file__).parent
FORBIDDEN = ("ray", "optuna")


def _modules() -> list[str]:
    names = ["cxr"] + [f"cxr.{p.stem}" for p in sorted(CXR_DIR.glob("*.py")) if p.stem != "__init__"]
    assert len(names) > 5, f"expected the cxr modules, globbed {names}"
    return names


def test_every_module_is_listed() -> None:
    # the glob must see the modules the brief names; a rename or an empty package dir fails here
    for module in ("data", "images", "synthetic", "dataset", "models", "config", "schedules",
                   "augment", "engine", "metrics", "errors", "package", "predict", "evaluation", "final"):
        assert f"cxr.{module}" in _modules()


def test_importing_cxr_loads_neither_ray_nor_optuna() -> None:
    modules = _modules()
    code = (
        f"import sys, importlib\n"
        f"for name in {modules!r}:\n"
        f"    importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        f"assert not bad, bad\n"
        f"print('ok', len({modules!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"ok {len(modules)}"
