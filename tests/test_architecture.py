"""The layering of ARCHITECTURE.md, checked on the source: ``state`` is pure (no Kafka, no faust,
nothing of stream_app), and the web and console surfaces do not import each other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module a file imports (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def files_of(package: str) -> list[Path]:
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


def offending(package: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in files_of(package):
        for name in sorted(imported_modules(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


def test_state_is_pure_statistics():
    assert files_of("state"), "no state package found"
    assert offending("state", ("stream_app", "faust", "aiokafka", "mode", "kafka")) == []


def test_state_imports_without_kafka_in_a_fresh_interpreter():
    probe = "import sys, state, state.live, state.batch; print(sorted(m for m in sys.modules if m.split('.')[0] in ('faust', 'aiokafka', 'mode', 'stream_app')))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("package, other", [("stream_app.web", "stream_app.console"), ("stream_app.console", "stream_app.web")])
def test_surfaces_do_not_import_each_other(package, other):
    assert files_of(package), f"no {package} package found"
    assert offending(package, (other,)) == []


def test_web_does_not_import_the_worker_module():
    """No import circle: the app registers the views (web.register), the views never import it."""
    assert offending("stream_app.web", ("stream_app.app",)) == []


def test_the_checker_sees_relative_and_nested_imports():
    """The checks above would pass vacuously if relative or function-level imports were missed."""
    assert "stream_app.settings" in imported_modules(ROOT / "stream_app/web/context.py")  # from ..settings
    assert "stream_app.kafka.clients" in imported_modules(ROOT / "stream_app/console/cli.py")  # inside functions
    assert offending("stream_app.console", ("stream_app.kafka",)) != []
