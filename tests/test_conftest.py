"""The test suite itself: run without the project's shared material beside the repository, it
stops at once with one line naming the missing folder (tests/conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)


def test_without_shared_the_run_stops_at_once_with_one_line_naming_the_folder(tmp_path):
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    shutil.copy(Path(__file__).with_name("conftest.py"), repo / "tests" / "conftest.py")
    (repo / "tests" / "test_any.py").write_text("def test_any():\n    pass\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent.parent),
                                                                      os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=50)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "1 passed" not in done.stdout  # nothing ran
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "the tests need the project's shared material" in lines[0] and f"{tmp_path / 'shared'} is not a directory" \
        in lines[0]
    assert "Traceback" not in done.stderr
