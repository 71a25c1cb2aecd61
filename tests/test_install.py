"""A plain install, as a production user makes it: the sdist built from this tree, installed with
no extras into a fresh virtual environment (no system site packages: every dependency comes from
the package index, as on a new machine), outside the checkout. Its worker runs healthy on the
default settings (rocksdb:// store) against the session's broker; the commands that need the
embedded broker name the [local] extra in one line; the sdist carries what its tests need.

Slow (about a minute: the dependencies are downloaded or taken from pip's cache), but .ci/run
runs it with the rest of the suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from stream_app.kafka.embedded_broker import free_port

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# What the sdist's tests read besides the packages (tests/test_compose.py reads the first two).
SDIST_NEEDS = ("docker-compose.yml", "Dockerfile", ".ci/run", "LICENSE", "pyproject.toml", "README.md")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user of the installed package: not this checkout's code."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "KAFKA_BOOTSTRAP", "VIRTUAL_ENV") and not k.startswith("PYTEST")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def sh(*argv, cwd: Path, env: dict | None = None, timeout: float = 400) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env or clean_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def tree_files() -> list[str]:
    """The checkout's files as git knows them (what a clone has), else everything but caches."""
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode == 0 and listed.stdout.strip():
        return [line for line in listed.stdout.splitlines() if (REPO / line).is_file()]
    skip = {"__pycache__", ".git", "build", "dist", "seqstream-data", ".pytest_cache", ".hypothesis"}
    return [str(p.relative_to(REPO)) for p in REPO.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(REPO).parts) and ".egg-info" not in str(p)]


@pytest.fixture(scope="module")
def plain_install(tmp_path_factory):
    """(venv bin dir, sdist member names, home dir outside the checkout)."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    for name in tree_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    sh(sys.executable, "-m", "venv", root / "venv", cwd=root)
    bin_dir = root / "venv" / "bin"
    # The build backend's own requirement (pyproject's build-system), to build the sdist here.
    sh(bin_dir / "python", "-m", "pip", "install", "-q", "setuptools>=77", cwd=root)
    out = sh(bin_dir / "python", "-c", "from setuptools import build_meta; print(build_meta.build_sdist('../dist'))",
             cwd=source).stdout.split()[-1]
    sdist = root / "dist" / out
    with tarfile.open(sdist) as tar:
        members = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    sh(bin_dir / "python", "-m", "pip", "install", "-q", sdist, cwd=root)  # no extras
    home = root / "home"
    home.mkdir()
    return bin_dir, members, home


def test_the_sdist_carries_what_its_tests_need(plain_install):
    _, members, _ = plain_install
    tests = {name for name in tree_files() if name.startswith("tests/")}
    assert tests and tests <= members, sorted(tests - members)
    assert {"tests/conftest.py", "tests/stream_support.py"} <= members
    assert set(SDIST_NEEDS) <= members, sorted(set(SDIST_NEEDS) - members)
    assert "stream_app/web/static/dashboard.html" in members


def test_a_plain_install_has_rocksdict_a_version_and_no_embedded_broker(plain_install):
    bin_dir, _, home = plain_install
    version = sh(bin_dir / "seqstream", "--version", cwd=home).stdout.strip()
    assert version == "seqstream 0.1.0 (embedded broker: not installed, pip install 'seqstream[local]' to have it)"
    where = sh(bin_dir / "python", "-c", "import rocksdict, stream_app; print(stream_app.__file__)", cwd=home).stdout
    assert str(bin_dir.parent) in where  # the installed package, not this checkout
    for argv in (["worker"], ["demo"]):
        done = subprocess.run([bin_dir / "seqstream", *argv], cwd=home, env=clean_env(SEQSTREAM_LOCAL_BROKER=f"127.0.0.1:{free_port()}"),
                              capture_output=True, text=True, timeout=60)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert "the embedded broker is not installed: pip install 'seqstream[local]'" in lines[0]
    assert list(home.iterdir()) == []


def test_a_plain_install_runs_a_healthy_worker_on_the_default_store(plain_install, broker):
    bin_dir, _, home = plain_install
    run = f"plain-{uuid.uuid4().hex[:8]}"
    port = free_port()
    # Defaults but for where the broker is and what this run's names are (the broker is shared).
    env = clean_env(KAFKA_BOOTSTRAP=broker, SEQSTREAM_APP_ID=run, SEQSTREAM_TOPIC_PREFIX=f"{run}.",
                    SEQSTREAM_WEB_PORT=str(port))
    log = home.parent / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen([bin_dir / "seqstream", "worker"], cwd=home, env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        health = None
        while time.monotonic() < deadline and worker.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                    health = response.status
                    break
            except OSError:
                time.sleep(0.3)
        assert health == 200, log.read_text()[-3000:]
        text = log.read_text()
        assert "rocksdb:" in text and "RocksDB bindings not installed" not in text and "Traceback" not in text
        assert (home / "seqstream-data").is_dir()  # the default SEQSTREAM_DATADIR, for the rocksdb store
    finally:
        worker.terminate()
        worker.wait(30)
