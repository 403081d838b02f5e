"""The library never pulls in the search stack: importing any module of cxr loads neither ray nor optuna (nor tune)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import cxr

FORBIDDEN = ("ray", "optuna", "tune", "search_spaces")


def test_importing_any_cxr_module_loads_neither_ray_nor_optuna() -> None:
    modules = ["cxr"] + [f"cxr.{m.name}" for m in pkgutil.iter_modules(cxr.__path__)]
    code = (
        "import sys, importlib\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "assert not bad, bad\n"
        f"print('ok', len({modules!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"ok {len(modules)}"
