"""What the package declares and ships: every library the code imports is declared,
the lock files pin what pyproject.toml allows (with hashes), and the deployable files live in the package."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("shared", "web", "worker", "cli", "stripe_emulator")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def imported_modules(package: str) -> Iterator[tuple[Path, str]]:
    """(file, top-level module) for every absolute import under a package."""
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield path, alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                yield path, node.module.split(".")[0]


def _declared(requirements: list[str]) -> dict[str, Requirement]:
    parsed = (Requirement(line) for line in requirements)
    return {canonicalize_name(r.name): r for r in parsed}


RUNTIME = _declared(PYPROJECT["project"]["dependencies"])
DEV = _declared(PYPROJECT["project"]["optional-dependencies"]["dev"])


def test_every_library_the_product_imports_is_a_declared_runtime_dependency() -> None:
    distributions = packages_distributions()
    missing: set[str] = set()
    for package in PRODUCT:
        for path, module in imported_modules(package):
            if module in sys.stdlib_module_names or module in PRODUCT or module == "__future__":
                continue
            names = {canonicalize_name(d) for d in distributions.get(module, [module])}
            if not names & set(RUNTIME):
                missing.add(f"{module} (imported by {path.relative_to(ROOT)})")
    assert not missing, sorted(missing)


def test_tools_for_the_demo_and_the_tests_stay_out_of_the_runtime() -> None:
    for tool in ("honcho", "pytest", "uv", "playwright", "fakeredis", "ruff"):
        assert tool not in RUNTIME and tool in DEV
    assert "tenacity" not in RUNTIME  # declared once and never imported: gone


def lock_pins(name: str) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) for every pin of a lock file."""
    pins: dict[str, tuple[str, int]] = {}
    text = (ROOT / name).read_text()
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s\\]+)", block)
        if match:
            pins[canonicalize_name(match[1])] = (match[2], block.count("--hash=sha256:"))
    return pins


@pytest.mark.parametrize(
    ("lock", "declared"), [("requirements.lock", RUNTIME), ("requirements-dev.lock", {**RUNTIME, **DEV})]
)
def test_the_lock_pins_every_dependency_within_its_range_with_hashes(
    lock: str, declared: dict[str, Requirement]
) -> None:
    pins = lock_pins(lock)
    assert len(pins) > len(declared)  # the dependencies' own dependencies are pinned too
    for name, requirement in declared.items():
        assert name in pins, f"{name} is declared in pyproject.toml but not pinned in {lock}: make lock"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock} pins {name}=={version}, outside pyproject.toml's {requirement}: make lock"
        )
    assert all(hashes for _, hashes in pins.values()), "every pin carries its hashes (--require-hashes)"


def test_the_dev_lock_runs_the_same_versions_as_the_image() -> None:
    runtime, dev = lock_pins("requirements.lock"), lock_pins("requirements-dev.lock")
    assert {name: dev[name][0] for name in runtime} == {name: pin[0] for name, pin in runtime.items()}
    assert not {"honcho", "pytest", "uv"} & set(runtime)


def test_the_migrations_ship_inside_the_package() -> None:
    from shared.adapters.migrate import MIGRATIONS_DIR

    assert MIGRATIONS_DIR == ROOT / "shared" / "adapters" / "migrations"
    assert (MIGRATIONS_DIR / "env.py").is_file() and (MIGRATIONS_DIR / "script.py.mako").is_file()
    assert len(list((MIGRATIONS_DIR / "versions").glob("0*.py"))) >= 8
    assert not (ROOT / "migrations").exists() and not (ROOT / "celeryconfig.py").exists()


def test_the_image_build_context_leaves_out_local_state() -> None:
    """.dockerignore lets in only what the Dockerfile copies: never .env, var/, .venv or .git."""
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"  # everything out, then the few paths the build needs back in
    let_in = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert let_in == {
        "requirements.lock",
        "pyproject.toml",
        "README.md",
        "shared",
        "web",
        "worker",
        "cli",
        "stripe_emulator",
    }
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = {
        word.rstrip("/")
        for line in dockerfile.splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for word in line.split()[1:-1]
    }
    assert copied == let_in
