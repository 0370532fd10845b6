"""The built wheel, installed without -e into a fresh virtualenv, is a working Heartline: it carries sql/
and migrates a database, and a role started without its extra names the extra to install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from heartline.migrations import load_migrations

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 600) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HEARTLINE_", "PYTHON", "VIRTUAL_ENV"))}
    return subprocess.run(args, cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel built from this tree installed in it (no extras): its bin/."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the sources: setuptools builds in the tree and never empties build/, so a
    # module renamed since an earlier build would ride along in the wheel.
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "site", "artifacts", ".heartline", "__pycache__",
        ".pytest_cache", ".ruff_cache", ".mypy_cache", ".hypothesis", "node_modules"))
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(source)],
                 cwd=tmp)
    assert built.returncode == 0, built.stderr
    wheels = list((tmp / "dist").glob("heartline-*.whl"))
    assert len(wheels) == 1
    venv = tmp / "venv"
    made = _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)], cwd=tmp)
    assert made.returncode == 0, made.stderr
    pip = _run([str(venv / "bin" / "pip"), "install", "-q", str(wheels[0])], cwd=tmp)
    assert pip.returncode == 0, pip.stderr
    return venv / "bin"


def test_the_wheel_carries_the_migrations_and_installs_outside_the_tree(installed: Path, tmp_path: Path) -> None:
    where = _run([str(installed / "python"), "-c",
                  ("import heartline.sql, heartline.migrations as m; "
                  "print(heartline.sql.__file__); print(len(m.load_migrations()))")], cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    location, count = where.stdout.split()
    assert Path(location).is_relative_to(installed.parent)
    assert int(count) == len(load_migrations())


async def test_the_installed_wheel_migrates_a_database(installed: Path, tmp_path: Path,
                                                       make_database: Callable[[str], Any]) -> None:
    url = await make_database(f"heartline_wheel_{os.getpid()}")
    env = {"HEARTLINE_DATABASE_URL": url, "HEARTLINE_DATA_DIR": str(tmp_path)}
    first = _run([str(installed / "heartline"), "migrate"], cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    # the first line says whether a backup was taken first (`heartline migrate` backs up a database with data)
    assert any(line.startswith(f"applied {len(load_migrations())} migration(s): 0001_")
               for line in first.stdout.splitlines()), first.stdout
    again = _run([str(installed / "heartline"), "migrate"], cwd=tmp_path, env=env)
    assert again.stdout.strip() == "schema is up to date", again.stderr


@pytest.mark.parametrize(("command", "extra"), [
    ("edge", "edge"), ("worker", "worker"), ("admin", "admin"), ("create-admin", "admin"), ("dev", "dev")])
def test_a_role_without_its_extra_names_the_extra_in_one_line(installed: Path, tmp_path: Path,
                                                              command: str, extra: str) -> None:
    res = _run([str(installed / "heartline"), command], cwd=tmp_path, env={"HEARTLINE_DATA_DIR": str(tmp_path)})
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"heartline {command} needs the '{extra}' extra")
    assert lines[0].endswith(f"pip install 'heartline[{extra}]'")


def test_the_extras_checked_at_start_are_those_pyproject_declares() -> None:
    from heartline.extras import EXTRA_MODULES

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra, modules in EXTRA_MODULES.items():
        distributions = {req.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower()
                         .replace("-", "_") for req in declared[extra] if not req.startswith("heartline[")}
        # where a distribution's top-level module has another name than the distribution
        provided = {{"pynacl": "nacl"}.get(name, name) for name in distributions}
        assert provided == set(modules), extra
