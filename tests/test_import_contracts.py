"""The import contracts `make lint` checks (pyproject.toml, [tool.importlinter]) hold for the tree, and a
forbidden import fails them: the build would stop on it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shared", "web", "worker", "cli", "stripe_emulator")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    # The tree's own packages first on the path: the copy, not the installed checkout, is what is read.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(tree / "pyproject.toml")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the product's Python sources and of pyproject.toml."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("*.json", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("shared/domain/money.py", "from shared.adapters import database", "in layers"),
        ("shared/services/batch.py", "from shared.adapters import database", "in layers"),
        ("shared/domain/ledger.py", "import redis", "the domain is pure"),
        ("shared/domain/eligibility.py", "from sqlalchemy.orm import Session", "the domain is pure"),
        ("shared/services/outbox.py", "import celery", "no Flask or Celery in shared/"),
        ("web/api.py", "import stripe", "the Stripe SDK only in its adapter"),
        ("web/admin.py", "from worker import tasks", "the entry points stand alone"),
        ("cli/__init__.py", "import web", "the entry points stand alone"),
        ("shared/services/charging.py", "import web", "shared/ imports no entry point"),
        ("worker/tasks.py", "import stripe_emulator", "the product never imports the emulator"),
    ],
)
def test_a_forbidden_import_fails_the_build(tree: Path, module: str, line: str, contract: str) -> None:
    path = tree / module
    path.write_text(path.read_text() + f"\n{line}  # a forbidden import\n")
    result = lint_imports(tree)
    assert result.returncode != 0, result.stdout
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout
