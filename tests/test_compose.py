"""docker-compose.yml and Dockerfile against the app they run.

Static checks parse both files and compare them with the app's own definitions (the environment
variables of stream_app.settings.ENVIRONMENT, the CLI, the topic creation code, pyproject's
script); every check is also run on deliberately broken copies of the files (test_check_rejects)
so none of them can pass vacuously. The runtime tests execute the compose file's own topic
creation and publisher snippets, and a worker with the compose environment, against the
session's Kafka-protocol broker (the ``broker`` fixture: KAFKA_BOOTSTRAP, else an embedded one).
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest
import yaml

from stream_app.console.cli import build_parser, cmd_worker
from stream_app.settings import ENVIRONMENT, Settings

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
PYPROJECT = REPO / "pyproject.toml"

APP_SERVICES = ("topics", "worker", "publisher")
SERVICES = ("kafka",) + APP_SERVICES
ENV_NAME = re.compile(r"\b(?:SEQSTREAM_[A-Z0-9_]*|KAFKA_BOOTSTRAP[A-Z0-9_]*)")
KNOWN_SERVICE_KEYS = {"image", "build", "command", "entrypoint", "environment", "depends_on", "deploy",
                      "healthcheck", "volumes", "restart", "expose", "ports", "hostname"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


# -- parsing ----------------------------------------------------------------------------------

def interpolate(text: str) -> str:
    """Compose's variable interpolation of a value, restricted to what this file may use: ``$$``
    (a literal ``$``) and ``${NAME:-default}`` / ``${NAME-default}`` (the default is taken, so
    the checks do not depend on the caller's environment). Anything else fails: Compose would
    substitute it (e.g. a ``$x`` inside the Python snippets)."""
    def replace(match: re.Match) -> str:
        token = match.group(0)
        if token == "$$":
            return "$"
        braced = re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-(.*)\}", token)
        assert braced, f"compose would interpolate {token!r}: write $$ for a literal $, or ${{NAME:-default}}"
        return braced.group(1)

    return re.sub(r"\$(\$|\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*|)", replace, text)


def interpolate_values(node):
    """Compose interpolates the parsed file's values (not keys, not comments)."""
    if isinstance(node, dict):
        return {key: interpolate_values(value) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_values(value) for value in node]
    return interpolate(node) if isinstance(node, str) else node


@dataclasses.dataclass
class Project:
    compose_text: str
    dockerfile: str
    pyproject: dict

    @property
    def compose(self) -> dict:
        return interpolate_values(yaml.safe_load(self.compose_text))

    @property
    def services(self) -> dict:
        return self.compose["services"]


def load_project(compose_text: str | None = None, dockerfile: str | None = None,
                 pyproject: str | None = None) -> Project:
    return Project(
        compose_text if compose_text is not None else COMPOSE_FILE.read_text(),
        dockerfile if dockerfile is not None else DOCKERFILE.read_text(),
        tomllib.loads(pyproject if pyproject is not None else PYPROJECT.read_text()),
    )


def as_list(value) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for k, v in env.items()}


def app_env(service: dict) -> dict[str, str]:
    return {k: v for k, v in env_of(service).items() if k in ENVIRONMENT}


def python_snippet(service: dict) -> str:
    """The code of a service that runs ``python -c CODE`` (entrypoint + command)."""
    argv = as_list(service.get("entrypoint")) + as_list(service.get("command"))
    assert argv[:2] in (["python", "-c"], ["python3", "-c"]) and len(argv) == 3, \
        f"expected python -c CODE, got {argv[:2]}..."
    return argv[2]


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """'PLAINTEXT://kafka:9092,CONTROLLER://:9093' -> {'PLAINTEXT': ('kafka', 9092), ...}"""
    out = {}
    for item in value.split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in (raw.strip() for raw in joined.splitlines()) if line and not line.startswith("#")]


def depends(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def worker_services(services: dict) -> list[str]:
    return sorted(name for name in services if name == "worker" or re.fullmatch(r"worker[-_]?\d+", name))


def worker_count(services: dict) -> int:
    return sum(int(((services[n].get("deploy") or {}).get("replicas", 1))) for n in worker_services(services))


# -- checks (each raises AssertionError; test_check_rejects proves each one can) --------------

def check_structure(p: Project) -> None:
    compose = p.compose
    assert set(SERVICES) <= set(compose["services"]), f"services {sorted(compose['services'])}, want {SERVICES}"
    assert set(compose) <= {"services", "volumes", "networks"} | {k for k in compose if k.startswith("x-")}, \
        f"unknown top-level keys {sorted(compose)}"
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        unknown = set(service) - KNOWN_SERVICE_KEYS - {k for k in service if k.startswith("x-")}
        assert not unknown, f"{name}: unknown keys {sorted(unknown)} (typo?)"
        for target, condition in depends(service).items():
            assert target in compose["services"], f"{name} depends on unknown service {target}"
            assert condition in CONDITIONS, f"{name}: depends_on {target}: bad condition {condition!r}"
            if condition == "service_healthy":
                assert "healthcheck" in compose["services"][target], f"{name} waits for {target} healthy; it has no healthcheck"
            if condition == "service_completed_successfully":
                assert str(compose["services"][target].get("restart", "no")) == "no", \
                    f"{name} waits for {target} to complete, but {target} restarts"
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0] if ":" in volume else None
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: named volume {source!r} not declared under volumes:"


def check_kafka(p: Project) -> None:
    kafka = p.services["kafka"]
    assert str(kafka.get("image", "")).startswith("apache/kafka:"), f"kafka image {kafka.get('image')!r}: want apache/kafka"
    env = env_of(kafka)
    roles = {r.strip() for r in env.get("KAFKA_PROCESS_ROLES", "").split(",")}
    assert roles == {"broker", "controller"}, f"KRaft combined mode needs roles broker,controller, got {roles}"
    assert env.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "").lower() == "false", \
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE must be false: an auto-created topic has one partition"
    for name in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                 "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env.get(name) == "1", f"{name} must be 1 on a single broker, got {env.get(name)!r}"
    controllers = env.get("KAFKA_CONTROLLER_LISTENER_NAMES", "")
    listen = listeners(env["KAFKA_LISTENERS"])
    assert controllers in listen, f"controller listener {controllers!r} not in KAFKA_LISTENERS"
    protocol_map = dict(item.split(":") for item in env.get("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "").split(","))
    assert set(listen) <= set(protocol_map), f"listeners {sorted(listen)} missing from the security protocol map"
    host = kafka.get("hostname", "kafka")
    want_voter = f"{env.get('KAFKA_NODE_ID')}@{host}:{listen[controllers][1]}"
    assert env.get("KAFKA_CONTROLLER_QUORUM_VOTERS") == want_voter, \
        f"KAFKA_CONTROLLER_QUORUM_VOTERS {env.get('KAFKA_CONTROLLER_QUORUM_VOTERS')!r}, want {want_voter!r}"
    assert env.get("CLUSTER_ID"), "CLUSTER_ID must be fixed so the data volume is reused after a restart"
    mounts = {v.split(":")[1] for v in kafka.get("volumes") or [] if ":" in v and not v.startswith((".", "/"))}
    assert env.get("KAFKA_LOG_DIRS") in mounts, f"KAFKA_LOG_DIRS {env.get('KAFKA_LOG_DIRS')!r} is not on a named volume"
    assert (kafka.get("healthcheck") or {}).get("test"), "kafka needs a healthcheck (the topics step waits for it)"


def check_env_names(p: Project) -> None:
    for source, text in (("docker-compose.yml", p.compose_text), ("Dockerfile", p.dockerfile)):
        stale = sorted(set(ENV_NAME.findall(text)) - set(ENVIRONMENT))
        assert not stale, f"{source} names {stale}, which stream_app.settings.ENVIRONMENT does not read"


def check_env_values(p: Project) -> None:
    services = p.services
    envs = {name: app_env(services[name]) for name in APP_SERVICES}
    for name, env in envs.items():
        assert env, f"{name} sets none of the app's variables"
        try:
            settings = Settings.from_env(env)
        except SystemExit as exc:
            raise AssertionError(f"{name}: {exc}") from None
        assert settings.replication <= 1, f"{name}: SEQSTREAM_REPLICATION {settings.replication} > 1 broker"
        assert settings.partitions >= worker_count(services), \
            f"{name}: {settings.partitions} partitions for {worker_count(services)} workers: one would idle"
    first = envs[APP_SERVICES[0]]
    for name, env in envs.items():
        assert env == first, f"{name}'s app variables differ from {APP_SERVICES[0]}'s: use the shared anchor"
    docker_env = {}
    for instruction, args in dockerfile_instructions(p.dockerfile):
        if instruction == "ENV":
            docker_env.update(dict(pair.split("=", 1) for pair in shlex.split(args)))
    try:
        Settings.from_env({k: v for k, v in docker_env.items() if k in ENVIRONMENT})
    except SystemExit as exc:
        raise AssertionError(f"Dockerfile ENV: {exc}") from None


def check_bootstrap(p: Project) -> None:
    services = p.services
    kafka_env = env_of(services["kafka"])
    advertised = listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    bound = listeners(kafka_env["KAFKA_LISTENERS"])
    names = {"kafka", services["kafka"].get("hostname", "kafka")}
    for name in APP_SERVICES:
        bootstrap = Settings.from_env(app_env(services[name])).bootstrap
        assert bootstrap, f"{name}: KAFKA_BOOTSTRAP unset (`seqstream worker` refuses to run)"
        host, _, port = bootstrap.rpartition(":")
        match = [listener for listener, address in advertised.items() if address == (host, int(port))]
        assert match, f"{name}: KAFKA_BOOTSTRAP {bootstrap!r} is not an advertised listener {advertised}"
        assert host in names, f"{name}: KAFKA_BOOTSTRAP host {host!r} is not the kafka service"
        assert bound.get(match[0], (None, None))[1] == int(port), f"{name}: broker does not listen on {bootstrap}"


def check_worker(p: Project) -> None:
    services = p.services
    workers = worker_services(services)
    assert worker_count(services) == 2, f"want 2 workers, have {worker_count(services)} ({workers})"
    for name in workers:
        worker = services[name]
        assert as_list(worker.get("entrypoint")) in ([], ["seqstream"]), f"{name}: entrypoint overridden"
        command = as_list(worker.get("command"))
        assert command == ["worker"], f"{name}: command {command}, want ['worker']"
        assert build_parser().parse_args(command).func is cmd_worker, f"{name}: {command} is not `seqstream worker`"
        replicas = int((worker.get("deploy") or {}).get("replicas", 1))
        for port in worker.get("ports") or []:
            assert replicas == 1 or ":" not in str(port), f"{name}: fixed host port {port} with {replicas} replicas"
        assert depends(worker).get("topics") == "service_completed_successfully", \
            f"{name} must wait for the topics step to complete successfully"
        datadir = Settings.from_env(app_env(worker)).datadir
        mounts = {str(v).split(":")[1] if ":" in str(v) else str(v): str(v) for v in worker.get("volumes") or []}
        assert datadir in mounts, f"{name}: SEQSTREAM_DATADIR {datadir!r} is not a volume"
        assert replicas == 1 or ":" not in mounts[datadir], \
            f"{name}: {replicas} replicas would share the rocksdb volume {mounts[datadir]!r}"
        assert (worker.get("healthcheck") or {}).get("test"), f"{name}: no healthcheck"


def imported_names(code: str) -> list[tuple[str, str | None]]:
    names = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names += [(node.module, alias.name) for alias in node.names]
    return names


def check_snippet(code: str, label: str) -> None:
    try:
        compile(code, label, "exec")
    except SyntaxError as exc:
        raise AssertionError(f"{label} snippet does not compile: {exc}") from None
    for module, name in imported_names(code):
        try:
            imported = importlib.import_module(module)
        except ImportError as exc:
            raise AssertionError(f"{label}: import {module}: {exc}") from None
        if name is not None and not hasattr(imported, name):
            try:  # `from package import submodule`
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                raise AssertionError(f"{label}: {module} has no {name}") from None


def check_topics(p: Project) -> None:
    topics = p.services["topics"]
    code = python_snippet(topics)
    check_snippet(code, "topics")
    assert ("stream_app.kafka.topics", "create_topics") in imported_names(code), "topics must use stream_app.kafka.topics.create_topics"
    calls = {node.func.id for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert "create_topics" in calls, "the topics step imports create_topics but never calls it"
    assert "Settings.from_env" in code, "the topics step must read its settings from the environment"
    assert str(topics.get("restart", "no")) == "no", "the topics step is one-shot: restart 'no'"
    assert depends(topics).get("kafka") == "service_healthy", "the topics step must wait for kafka to be healthy"


def check_publisher(p: Project) -> None:
    publisher = p.services["publisher"]
    code = python_snippet(publisher)
    check_snippet(code, "publisher")
    used = {name for _, name in imported_names(code)}
    for name in ("send_observations", "send_config", "config_message", "demo_experiments", "simulate"):
        assert name in used, f"the publisher does not use {name}"
    assert str(publisher.get("restart", "no")) == "no", "the publisher runs once: restart 'no'"
    assert depends(publisher).get("topics") == "service_completed_successfully", "the publisher must wait for topics"
    env = env_of(publisher)
    for knob in ("DEMO_INTERVALS", "DEMO_PACE"):
        assert knob in code, f"the publisher snippet does not read {knob}"
        assert knob in env, f"the publisher service does not set {knob}"
    int(env["DEMO_INTERVALS"]), float(env["DEMO_PACE"])


def check_dockerfile(p: Project) -> None:
    instructions = dockerfile_instructions(p.dockerfile)
    by_kind: dict[str, list[str]] = {}
    for kind, args in instructions:
        by_kind.setdefault(kind, []).append(args)
    assert by_kind.get("FROM", [""])[0].split()[0] == "python:3.11-slim", f"base image {by_kind.get('FROM')}"
    entrypoint = by_kind.get("ENTRYPOINT", ["[]"])[-1]
    assert json.loads(entrypoint) == ["seqstream"], f"ENTRYPOINT {entrypoint}, want [\"seqstream\"]"
    scripts = p.pyproject["project"].get("scripts", {})
    assert "seqstream" in scripts, "pyproject defines no `seqstream` script"
    module, _, attr = scripts["seqstream"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr, None)), f"{scripts['seqstream']} is not callable"
    installs = " ".join(args for args in by_kind.get("RUN", []) if "pip install" in args)
    assert "pip install" in installs, "the Dockerfile never pip-installs the project"
    copied = " ".join(by_kind.get("COPY", []))
    top_level = sorted({name.split(".")[0] for name in p.pyproject["tool"]["setuptools"]["packages"]})
    license_files = p.pyproject["project"].get("license-files", [])  # building fails without them
    for package in top_level + ["pyproject.toml"] + license_files:
        assert re.search(rf"(^|\s){re.escape(package)}(\s|/|$)", copied), f"the Dockerfile does not COPY {package}"
    stores = {Settings.from_env(app_env(p.services[name])).store for name in APP_SERVICES}
    if any(store.startswith("rocksdb") for store in stores):
        dependencies = " ".join(p.pyproject["project"].get("dependencies", []))
        assert "rocksdict" in installs or "rocksdict" in dependencies, \
            "SEQSTREAM_STORE is rocksdb:// but neither the image nor the package installs rocksdict"
    assert "[local]" not in installs and "noida" not in installs, "containers use external Kafka: no [local] extra"


CHECKS = {f.__name__: f for f in (check_structure, check_kafka, check_env_names, check_env_values, check_bootstrap,
                                  check_worker, check_topics, check_publisher, check_dockerfile)}


@pytest.mark.parametrize("name", list(CHECKS))
def test_compose_and_dockerfile(name):
    CHECKS[name](load_project())


# (check, file, old text, new text): each edit breaks the real files in a way the check must catch.
# old/new may be tuples of texts for an edit in several places.
MUTATIONS = [
    ("check_structure", "compose", "  publisher:\n", "  publisher_demo:\n"),
    ("check_structure", "compose", "    restart: unless-stopped\n\n  # One-shot", "    restartt: unless-stopped\n\n  # One-shot"),
    ("check_structure", "compose", "condition: service_completed_successfully\n    restart: unless-stopped",
     "condition: service_completed_succesfully\n    restart: unless-stopped"),
    ("check_structure", "compose", "\nvolumes:\n  kafka-data:\n", "\n"),
    ("check_structure", "compose", "condition: service_completed_successfully\n    restart: unless-stopped",
     "condition: service_healthy\n    restart: unless-stopped"),
    ("check_structure", "compose", '    depends_on:\n      kafka:\n        condition: service_healthy\n    restart: "no"',
     '    depends_on:\n      kafka:\n        condition: service_healthy\n    restart: on-failure'),
    ("check_kafka", "compose", "image: apache/kafka:3.9.0", "image: bitnami/kafka:3.9.0"),
    ("check_kafka", "compose", 'KAFKA_TRANSACTION_STATE_LOG_MIN_ISR: "1"', 'KAFKA_TRANSACTION_STATE_LOG_MIN_ISR: "2"'),
    ("check_kafka", "compose", 'KAFKA_CONTROLLER_LISTENER_NAMES: "CONTROLLER"', 'KAFKA_CONTROLLER_LISTENER_NAMES: "CTRL"'),
    ("check_kafka", "compose", '"CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"', '"PLAINTEXT:PLAINTEXT"'),
    ("check_kafka", "compose", '      CLUSTER_ID: "c2Vxc3RyZWFtLWthZmthMQ"\n', ""),
    ("check_kafka", "compose", '    healthcheck:\n      test: ["CMD-SHELL"', '    x-healthcheck:\n      test: ["CMD-SHELL"'),
    ("check_kafka", "compose", 'KAFKA_PROCESS_ROLES: "broker,controller"', 'KAFKA_PROCESS_ROLES: "broker"'),
    ("check_kafka", "compose", 'KAFKA_AUTO_CREATE_TOPICS_ENABLE: "false"', 'KAFKA_AUTO_CREATE_TOPICS_ENABLE: "true"'),
    ("check_kafka", "compose", 'KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR: "1"', 'KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR: "3"'),
    ("check_kafka", "compose", '"1@kafka:9093"', '"1@kafka:9092"'),
    ("check_kafka", "compose", 'KAFKA_LOG_DIRS: "/var/lib/kafka/data"', 'KAFKA_LOG_DIRS: "/tmp/kraft-combined-logs"'),
    ("check_env_names", "compose", "SEQSTREAM_WEB_HOST:", "SEQSTREAM_WEB_BIND:"),
    ("check_env_names", "compose", "KAFKA_BOOTSTRAP:", "KAFKA_BOOTSTRAP_SERVERS:"),
    ("check_env_names", "dockerfile", "SEQSTREAM_DATADIR=/data", "SEQSTREAM_DATA_DIR=/data"),
    ("check_env_values", "compose", 'SEQSTREAM_PARTITIONS: "4"', 'SEQSTREAM_PARTITIONS: "four"'),
    ("check_env_values", "compose", 'SEQSTREAM_PARTITIONS: "4"', 'SEQSTREAM_PARTITIONS: "1"'),
    ("check_env_values", "compose", 'SEQSTREAM_IDLE_TIMEOUT: "30"', 'SEQSTREAM_IDLE_TIMEOUT: "30s"'),
    ("check_env_values", "compose", 'SEQSTREAM_REPLICATION: "1"', 'SEQSTREAM_REPLICATION: "3"'),
    ("check_env_values", "compose", '      <<: *seqstream-env\n', '      <<: *seqstream-env\n      SEQSTREAM_APP_ID: "other"\n'),
    ("check_env_values", "dockerfile", "SEQSTREAM_DATADIR=/data", "SEQSTREAM_WEB_PORT=http"),
    ("check_bootstrap", "compose", 'KAFKA_BOOTSTRAP: "kafka:9092"', 'KAFKA_BOOTSTRAP: "localhost:9092"'),
    ("check_bootstrap", "compose", 'KAFKA_BOOTSTRAP: "kafka:9092"', 'KAFKA_BOOTSTRAP: "kafka:9093"'),
    ("check_bootstrap", "compose", 'KAFKA_BOOTSTRAP: "kafka:9092"', 'KAFKA_BOOTSTRAP: ""'),
    ("check_bootstrap", "compose", ('"PLAINTEXT://kafka:9092"', 'KAFKA_BOOTSTRAP: "kafka:9092"'),
     ('"PLAINTEXT://gateway:9092"', 'KAFKA_BOOTSTRAP: "gateway:9092"')),
    ("check_bootstrap", "compose", 'KAFKA_LISTENERS: "PLAINTEXT://:9092,', 'KAFKA_LISTENERS: "PLAINTEXT://:9094,'),
    ("check_worker", "compose", "replicas: 2", "replicas: 1"),
    ("check_worker", "compose", '    command: ["worker"]', '    entrypoint: ["faust", "-A", "stream_app.app"]\n    command: ["worker"]'),
    ("check_worker", "compose", "      - /data\n", "      - /var/data\n"),
    ("check_worker", "compose", '    healthcheck:\n      test: ["CMD", "python"', '    x-healthcheck:\n      test: ["CMD", "python"'),
    ("check_worker", "compose", 'command: ["worker"]', 'command: ["demo"]'),
    ("check_worker", "compose", "    expose:\n", '    ports:\n      - "6066:6066"\n    expose:\n'),
    ("check_worker", "compose", "      - /data\n", "      - worker-data:/data\n"),
    ("check_worker", "compose", "      topics:\n        condition: service_completed_successfully\n    restart: unless-stopped",
     "      topics:\n        condition: service_started\n    restart: unless-stopped"),
    ("check_topics", "compose", "create_topics(settings)", "print(settings)"),
    ("check_topics", "compose", "from stream_app.kafka.topics import create_topics, topic_specs",
     "from stream_app.kafka.topics import create_topic, topic_specs"),
    ("check_topics", "compose", "        condition: service_healthy\n", "        condition: service_started\n"),
    ("check_topics", "compose", "        settings = Settings.from_env()\n        create_topics",
     "        settings = Settings(*[None] * 17)\n        create_topics"),
    ("check_publisher", "compose", "from stream_app.codec import config_message\n", "from stream_app import codec\n"),
    ("check_publisher", "compose", 'os.environ.get("DEMO_INTERVALS", "20")', '"20"'),
    ("check_publisher", "compose", '      worker:\n        condition: service_started\n    restart: "no"',
     '      worker:\n        condition: service_started\n    restart: always'),
    ("check_publisher", "compose", "from stream_app.kafka.clients import producer, send_config, send_observations",
     "from stream_app.kafka.clients import producer, send_config, send_observation"),
    ("check_publisher", "compose", "from state.simulate import demo_experiments, simulate",
     "from state.simulations import demo_experiments, simulate"),
    ("check_publisher", "compose", "        asyncio.run(publish())", "        asyncio.run(publish()"),
    ("check_publisher", "compose", "        asyncio.run(publish())", "        asyncio.run(publish('$HOME'))"),
    ("check_publisher", "compose", '      DEMO_PACE: "2"\n', ""),
    ("check_dockerfile", "dockerfile", 'ENTRYPOINT ["seqstream"]', 'ENTRYPOINT ["python", "-m", "stream_app"]'),
    ("check_dockerfile", "dockerfile", "FROM python:3.11-slim", "FROM python:3.12-slim"),
    ("check_dockerfile", "pyproject", '    "rocksdict>=0.3.29",\n', ""),
    ("check_dockerfile", "dockerfile", "COPY state /src/state\n", ""),
    ("check_dockerfile", "dockerfile", "README.md LICENSE MANIFEST.in", "README.md MANIFEST.in"),
    ("check_dockerfile", "dockerfile", "pip install /src ", "pip install '/src[local]' "),
    ("check_dockerfile", "dockerfile", "RUN pip install /src", "RUN echo /src"),
    ("check_dockerfile", "pyproject", 'seqstream = "stream_app.console.cli:main"', 'seqstream-cli = "stream_app.console.cli:main"'),
    ("check_dockerfile", "pyproject", 'seqstream = "stream_app.console.cli:main"', 'seqstream = "stream_app.console.cli:start"'),
]


@pytest.mark.parametrize("check,target,old,new", MUTATIONS, ids=[f"{m[0]}-{i}" for i, m in enumerate(MUTATIONS)])
def test_check_rejects(check, target, old, new):
    """Every check fails on a copy of the files with one realistic mistake."""
    path = {"compose": COMPOSE_FILE, "dockerfile": DOCKERFILE, "pyproject": PYPROJECT}[target]
    text = path.read_text()
    for before, after in zip(*((old, new) if isinstance(old, tuple) else ((old,), (new,)))):
        assert text.count(before) == 1, f"mutation anchor {before!r} not found once in {path.name}: update MUTATIONS"
        text = text.replace(before, after)
    project = load_project(**{{"compose": "compose_text"}.get(target, target): text})
    with pytest.raises(AssertionError):
        CHECKS[check](project)


def test_container_imports_need_no_embedded_broker():
    """The image has no [local] extra: what the services import must not need noida_db."""
    project = load_project()
    modules = {m for name in ("topics", "publisher") for m, _ in imported_names(python_snippet(project.services[name]))}
    modules |= {"stream_app.console.cli", "stream_app.app"}
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'noida_db': raise ImportError('noida_db is not in the image')\n"
            "sys.meta_path.insert(0, Block())\n"
            + "".join(f"import {m}\n" for m in sorted(modules)))
    env = {**os.environ, **app_env(project.services["worker"])}
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]


# -- runtime: the compose file's own snippets against a real broker (the session's) -----------

def unique(name: str) -> str:
    """A run id of its own each time: on a persistent broker (KAFKA_BOOTSTRAP) a rerun must not
    read an earlier run's messages."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def service_env(service: dict, bootstrap: str, run: str, **extra: str) -> dict[str, str]:
    """The service's compose environment, pointed at the test broker with a private app id and
    topic prefix (so tests sharing the broker do not mix)."""
    return {**os.environ, **env_of(service), "KAFKA_BOOTSTRAP": bootstrap, "SEQSTREAM_APP_ID": run,
            "SEQSTREAM_TOPIC_PREFIX": f"{run}.", **extra}


def run_snippet(service: dict, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-c", python_snippet(service)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"
    return result


async def read_topics(bootstrap: str, topics: list[str], expected: int, timeout: float = 10.0) -> dict[str, list]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    out: dict[str, list] = {topic: [] for topic in topics}
    try:
        await consumer.topics()
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = asyncio.get_running_loop().time() + timeout
        while sum(map(len, out.values())) < expected and asyncio.get_running_loop().time() < deadline:
            for tp, messages in (await consumer.getmany(timeout_ms=200)).items():
                out[tp.topic].extend(messages)
    finally:
        await consumer.stop()
    return out


def demo_shape(intervals: int) -> tuple[int, int, int]:
    """(configs, observations, result rows) the demo traffic of ``intervals`` intervals makes."""
    from state.simulate import demo_experiments

    specs = demo_experiments(intervals)
    per_interval = sum(len(s.metrics) * len(s.variations) for s in specs)
    hypotheses = sum(len(s.metrics) * (len(s.variations) - 1) for s in specs)
    return len(specs), intervals * per_interval, intervals * hypotheses


@pytest.mark.timeout(60)
def test_topics_step_creates_the_app_topics(broker):
    from stream_app.kafka.admin import topic_partitions
    from stream_app.kafka.topics import topic_specs

    services = load_project().services
    env = service_env(services["topics"], broker, unique("topicsrun"))
    run_snippet(services["topics"], env)
    settings = Settings.from_env(env)
    for name, spec in topic_specs(settings).items():
        assert asyncio.run(topic_partitions(broker, name)) == spec.partitions, name


@pytest.mark.timeout(60)
def test_publisher_publishes_the_demo_traffic(broker):
    from stream_app.codec import decode_config, decode_observations

    services = load_project().services
    intervals = 2
    env = service_env(services["publisher"], broker, unique("pubrun"), DEMO_INTERVALS=str(intervals), DEMO_PACE="0")
    run_snippet(services["topics"], env)
    result = run_snippet(services["publisher"], env)
    assert f"interval {intervals}/{intervals}" in result.stdout
    settings = Settings.from_env(env)
    configs, observations, _ = demo_shape(intervals)
    messages = configs * intervals  # one array message per experiment and interval
    got = asyncio.run(read_topics(broker, [settings.topic("experiments"), settings.topic("observations")],
                                  configs + messages))
    config_messages, observation_messages = got[settings.topic("experiments")], got[settings.topic("observations")]
    assert len(config_messages) == configs and len(observation_messages) == messages
    experiments = set()
    for message in config_messages:
        experiment, version, _, metrics = decode_config(message.key, message.value)
        experiments.add(experiment)
        assert version == 1 and metrics
    timestamps = set()
    decoded = 0
    for message in observation_messages:
        experiment, elements = decode_observations(message.key, message.value, lambda e, m: False)
        assert experiment in experiments
        assert all(index is not None and not isinstance(obs, Exception) for index, obs in elements)
        decoded += len(elements)
        timestamps.update(obs.interval_timestamp for _, obs in elements)
    assert decoded == observations and len(timestamps) == intervals


@pytest.mark.timeout(90)
def test_stack_end_to_end(broker, tmp_path):
    """topics step, a worker with the compose worker environment, publisher: every result row arrives."""
    from stream_app.kafka.embedded_broker import free_port
    from stream_app.kafka.clients import follow
    from stream_app.kafka.worker_process import WorkerProcess

    services = load_project().services
    intervals = 3
    env = service_env(services["worker"], broker, unique("e2erun"), DEMO_INTERVALS=str(intervals), DEMO_PACE="0")
    # The container paths and bind address are the only host-specific values.
    settings = dataclasses.replace(Settings.from_env(env), datadir=str(tmp_path / "data"), web_host="127.0.0.1",
                                   web_port=free_port())
    assert settings.store == Settings.from_env(env_of(services["worker"])).store
    env.update(settings.to_env())
    run_snippet(services["topics"], env)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_healthy(30)
        run_snippet(services["publisher"], env)
        _, _, expected = demo_shape(intervals)

        async def collect() -> list[dict]:
            rows: list[dict] = []
            stop = asyncio.Event()
            asyncio.get_running_loop().call_later(30, stop.set)
            async for _, row in follow(settings, ["results"], stop=stop):
                rows.append(row)
                if len(rows) >= expected:
                    stop.set()
            return rows

        rows = asyncio.run(collect())
        assert len(rows) == expected, f"{len(rows)} of {expected} result rows; worker log:\n{worker.log_tail()}"
        assert {r["experiment_id"] for r in rows} == {"checkout-redesign", "pricing-banner"}
    finally:
        worker.stop()
