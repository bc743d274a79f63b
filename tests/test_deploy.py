"""deploy/: the files parse and name only what exists, and the production instance really works.

The static tests read every file under deploy/ and check each image, command, module and environment
variable against the project. The live test starts the code server, ``dagster-daemon`` and
``dagster-webserver`` exactly as deploy/compose.yaml does, with deploy/dagster.yaml and
deploy/workspace.yaml, on a fresh database of the machine's PostgreSQL service; it launches two
``clerk_full_sync`` runs through the webserver's GraphQL API (the second must wait QUEUED until the
first ends) while the daemon's sensor launches ``clerk_webhook_apply`` for an inbox event.
"""

import importlib
import importlib.util
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
import sqlalchemy as sa
import yaml
from psycopg import sql as psycopg_sql
from sqlalchemy.engine import Engine, make_url

from orgsync_pipeline.clerk.emulator import ClerkEmulator
from orgsync_pipeline.cli import build_parser
from orgsync_pipeline.store import inbox
from orgsync_pipeline.store.schema import organizations, webhook_inbox

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
SERVICE_URL = "postgresql://postgres@127.0.0.1:5432/test"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
ORGSYNC_IMAGE = f"orgsync:{VERSION}"
# Variables the postgres image reads (compose's postgres service only).
POSTGRES_IMAGE_VARIABLES = {"POSTGRES_PASSWORD", "POSTGRES_DB"}


def load(name: str) -> Any:
    return yaml.safe_load((DEPLOY / name).read_text())


def compose_services() -> dict[str, Any]:
    return load("compose.yaml")["services"]


def k8s_documents() -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((DEPLOY / "k8s" / "receiver.yaml").read_text()))


def env_references(node: Any) -> set[str]:
    """Names in Dagster's ``{env: NAME}`` config sources anywhere in ``node``."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(env_references(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(env_references(value) for value in node))
    return set()


def orgsync_variables() -> set[str]:
    """Every environment variable orgsync reads (settings.py is the only reader of os.environ)."""
    source = (ROOT / "orgsync_pipeline" / "settings.py").read_text()
    return set(re.findall(r'"([A-Z][A-Z0-9_]{2,})"', source))


def dagster_variables() -> set[str]:
    return env_references(load("dagster.yaml")) | env_references(load("workspace.yaml")) | {"DAGSTER_HOME"}


def env_example() -> dict[str, str]:
    """deploy/.env.example's variables, commented-out optional ones included."""
    pairs = re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=(.*)$", (DEPLOY / ".env.example").read_text(), re.M)
    return dict(pairs)


def test_every_yaml_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert {path.relative_to(DEPLOY).as_posix() for path in files} >= {
        "dagster.yaml",
        "workspace.yaml",
        "compose.yaml",
        "helm/values.yaml",
        "k8s/receiver.yaml",
    }
    for path in files:
        assert all(doc is not None for doc in yaml.safe_load_all(path.read_text())), path


def test_the_run_queue_limits_the_tags_the_jobs_carry() -> None:
    """deploy/dagster.yaml and the Helm values limit both jobs' tags to one run at a time."""
    from orgsync_pipeline.definitions import defs

    instance = load("dagster.yaml")
    limits = {
        item["key"]: item["limit"] for item in instance["concurrency"]["runs"]["tag_concurrency_limits"]
    }
    full_sync = defs.resolve_job_def("clerk_full_sync").tags
    webhook_apply = defs.resolve_job_def("clerk_webhook_apply").tags
    assert [limits[key] for key in full_sync if key in limits] == [1]
    assert [limits[key] for key in webhook_apply if key in limits] == [1]
    assert instance["run_coordinator"]["class"] == "QueuedRunCoordinator"

    queued = load("helm/values.yaml")["dagsterDaemon"]["runCoordinator"]
    assert queued["type"] == "QueuedRunCoordinator"
    helm = queued["config"]["queuedRunCoordinator"]
    assert {item["key"]: item["limit"] for item in helm["tagConcurrencyLimits"]} == limits
    assert helm["dequeueIntervalSeconds"] == instance["run_coordinator"]["config"]["dequeue_interval_seconds"]
    assert (
        load("helm/values.yaml")["postgresql"]["postgresqlScheme"]
        == (instance["storage"]["postgres"]["postgres_db"]["scheme"])
    )


def check_command(argv: list[str]) -> None:
    """Fail unless ``argv`` is a command this project's environment accepts, option by option."""
    program, args = argv[0], argv[1:]
    if program == "orgsync":
        build_parser().parse_args(args)  # exits (fails the test) on an unknown command or option
        return
    if program == "python":
        assert args[0] == "-c", argv
        compile(args[1], "<healthcheck>", "exec")
        return
    (entry_point,) = entry_points(group="console_scripts", name=program)
    command = importlib.import_module(entry_point.module).cli
    _click_accepts(command, args)
    if "-m" in args:
        module = args[args.index("-m") + 1]
        assert importlib.util.find_spec(module) is not None, module


def _click_accepts(command: click.Command, args: list[str]) -> None:
    context = command.make_context(command.name or "cli", list(args))
    if isinstance(command, click.Group):
        rest = [*getattr(context, "_protected_args", []), *context.args]
        _, sub, rest = command.resolve_command(context, rest)
        assert sub is not None, args
        _click_accepts(sub, rest)


def compose_commands() -> Iterator[tuple[str, list[str]]]:
    for name, service in compose_services().items():
        if "command" in service:
            yield name, service["command"]
        test = service.get("healthcheck", {}).get("test")
        if test and name != "postgres":
            assert test[0] == "CMD", test
            yield name, test[1:]


def test_every_command_exists() -> None:
    """Compose, Kubernetes, the Helm values and the Dockerfile run only commands this project has."""
    commands = [command for _, command in compose_commands()]
    commands += [c["command"] for doc in k8s_documents() if doc["kind"] == "Deployment"
                 for c in doc["spec"]["template"]["spec"]["containers"]]  # fmt: skip
    for deployment in load("helm/values.yaml")["dagster-user-deployments"]["deployments"]:
        commands.append(["dagster", "code-server", "start", "-p", "4000", *deployment["codeServerArgs"]])
    commands.append(dockerfile_cmd())
    assert len(commands) >= 8
    for command in commands:
        check_command([str(part) for part in command])


def dockerfile_cmd() -> list[str]:
    match = re.search(r"^CMD (\[.*\])$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert match, "deploy/Dockerfile has no exec-form CMD"
    return yaml.safe_load(match.group(1))


def test_the_dockerfile_is_multi_stage_non_root_and_copies_what_exists() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        *sources, _ = shlex.split(line)
        for source in sources:
            assert (ROOT / source).exists(), source
            ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
            assert f"!{source}" in ignore, f"{source} is excluded from the build context"
    extras = re.findall(r"-c constraints\.txt '\.\[([a-z,]+)\]'", text)
    assert extras and set(extras[0].split(",")) <= set(PYPROJECT["project"]["optional-dependencies"])


def test_images_are_this_projects_image_or_postgres() -> None:
    for name, service in compose_services().items():
        if name == "postgres":
            assert service["image"].startswith("postgres:")
            continue
        assert service["image"] == ORGSYNC_IMAGE, name
        assert (ROOT / "deploy" / "compose.yaml").parent.joinpath(
            service["build"]["context"]
        ).resolve() == ROOT
        assert (ROOT / service["build"]["dockerfile"]).is_file()
    for doc in k8s_documents():
        if doc["kind"] == "Deployment":
            assert {c["image"] for c in doc["spec"]["template"]["spec"]["containers"]} == {ORGSYNC_IMAGE}
    (deployment,) = load("helm/values.yaml")["dagster-user-deployments"]["deployments"]
    assert deployment["image"]["repository"].endswith("/orgsync")
    assert deployment["image"]["tag"] == VERSION


def compose_variables(service: dict[str, Any]) -> set[str]:
    """The variables compose sets in ``service``'s environment."""
    return set(service.get("environment", {}))


def compose_interpolations(service: dict[str, Any]) -> set[str]:
    """The ``${NAME}`` compose fills in from deploy/.env."""
    return set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", yaml.safe_dump(service)))


def test_every_variable_is_one_the_project_reads() -> None:
    known = orgsync_variables() | dagster_variables()
    for name, service in compose_services().items():
        allowed = known | (POSTGRES_IMAGE_VARIABLES if name == "postgres" else set())
        assert compose_variables(service) <= allowed, name
        assert compose_interpolations(service) <= set(env_example()), name
    assert set(env_example()) <= known | POSTGRES_IMAGE_VARIABLES
    helm = load("helm/values.yaml")["dagster-user-deployments"]["deployments"][0]
    assert {item["name"] for item in helm["env"]} <= orgsync_variables()
    for doc in k8s_documents():
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                assert {item["name"] for item in container.get("env", [])} <= orgsync_variables()


def test_each_process_gets_the_variables_it_needs() -> None:
    services = compose_services()
    dagster = dagster_variables() - {"DAGSTER_HOME"}  # set in the image
    storage = env_references(load("dagster.yaml"))
    for name in ("dagster-webserver", "dagster-daemon"):
        assert compose_variables(services[name]) >= dagster, name
    assert compose_variables(services["code-server"]) >= storage | {"DATABASE_URL", "CLERK_SECRET_KEY"}
    assert services["receiver"]["env_file"] == [".env"]
    required = {"DATABASE_URL", "CLERK_SECRET_KEY", "CLERK_WEBHOOK_SECRET", "POSTGRES_PASSWORD"}
    assert {key for key, value in env_example().items() if not value.startswith("#")} >= required
    assert orgsync_variables() >= {"DATABASE_URL", "CLERK_SECRET_KEY", "CLERK_WEBHOOK_SECRET"}
    assert "sk_live_replace_me" in (DEPLOY / ".env.example").read_text()  # placeholders, no secrets


def test_the_receiver_manifests_fit_together() -> None:
    """Readiness on the receiver's real /healthz route, several replicas, Service and HPA aimed at it."""
    from orgsync_pipeline.settings import load_settings
    from orgsync_pipeline.webhooks import create_app

    docs = {doc["kind"]: doc for doc in k8s_documents()}
    assert set(docs) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    deployment, service, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    secret = "whsec_" + "A" * 32
    app = create_app(load_settings({"CLERK_WEBHOOK_SECRET": secret, "DATABASE_URL": "postgresql://x/y"}))
    routes = {route.path for route in app.routes}
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz" and "/healthz" in routes
    port = container["command"][container["command"].index("--port") + 1]
    assert container["ports"][0]["containerPort"] == int(port)
    assert deployment["spec"]["replicas"] >= 2 and hpa["spec"]["minReplicas"] >= 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_the_code_location_is_named_orgsync_everywhere() -> None:
    (location,) = load("workspace.yaml")["load_from"]
    (deployment,) = load("helm/values.yaml")["dagster-user-deployments"]["deployments"]
    command = compose_services()["code-server"]["command"]
    assert location["grpc_server"]["location_name"] == deployment["name"] == "orgsync"
    assert command[command.index("--location-name") + 1] == "orgsync"
    assert PYPROJECT["tool"]["dagster"]["code_location_name"] == "orgsync"


# ---------------------------------------------------------------- the live instance


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def dagster_storage() -> Iterator[dict[str, str]]:
    """A fresh database for Dagster's storage on the PostgreSQL service, as DAGSTER_PG_* variables."""
    url = make_url(os.environ.get("ORGSYNC_TEST_DATABASE_URL") or SERVICE_URL)
    if url.host is None or url.host.startswith("/"):
        pytest.skip("needs a PostgreSQL service over TCP (ORGSYNC_TEST_DATABASE_URL)")
    admin = sa.create_engine(url.set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    name = f"dagster_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.connection.driver_connection.execute(
                psycopg_sql.SQL("CREATE DATABASE {}").format(psycopg_sql.Identifier(name))
            )
    except sa.exc.OperationalError:
        admin.dispose()
        pytest.skip(f"no PostgreSQL service at {url.host}:{url.port or 5432}")
    yield {
        "DAGSTER_PG_HOST": url.host,
        "DAGSTER_PG_PORT": str(url.port or 5432),
        "DAGSTER_PG_USERNAME": url.username or "postgres",
        "DAGSTER_PG_PASSWORD": url.password or "",
        "DAGSTER_PG_DB": name,
    }
    with admin.connect() as conn:
        conn.connection.driver_connection.execute(
            psycopg_sql.SQL("DROP DATABASE {} WITH (FORCE)").format(psycopg_sql.Identifier(name))
        )
    admin.dispose()


class Processes:
    """Long-running processes in their own sessions, each logging to a file; all stopped at exit."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = env
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *argv: str) -> None:
        with (self.directory / f"{name}.log").open("wb") as log:
            self.running[name] = subprocess.Popen(
                [str(BIN / argv[0]), *argv[1:]],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def logs(self) -> str:
        return "\n".join(
            f"--- {name}\n{(self.directory / f'{name}.log').read_text(errors='replace')[-3000:]}"
            for name in self.running
        )

    def stop_all(self) -> None:
        for process in self.running.values():
            os.killpg(process.pid, signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


class GraphQL:
    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, query: str, **variables: Any) -> dict[str, Any]:
        response = httpx.post(self.url, json={"query": query, "variables": variables}, timeout=30)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body
        return body["data"]


LOCATION_QUERY = """{ workspaceOrError { ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename } } } } }"""
LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
RUNS = """query($filter: RunsFilter) { runsOrError(filter: $filter) { ... on Runs { results {
  runId jobName status startTime endTime tags { key value } } } } }"""


def wait_for(condition: Any, timeout: float, processes: Processes, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        for name, process in processes.running.items():
            assert process.poll() is None, f"{name} exited while waiting for {what}\n{processes.logs()}"
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{processes.logs()}")


def location_loaded(graphql: GraphQL) -> bool:
    try:
        entries = graphql(LOCATION_QUERY)["workspaceOrError"]["locationEntries"]
    except httpx.HTTPError:
        return False
    return any(
        e["name"] == "orgsync" and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"
        for e in entries
    )


def launch_full_sync(graphql: GraphQL) -> str:
    selector = {"repositoryLocationName": "orgsync", "repositoryName": "__repository__"}
    params = {"selector": {**selector, "jobName": "clerk_full_sync"}, "runConfigData": {}}
    result = graphql(LAUNCH, params=params)["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def start_instance(tmp_path: Path, storage: dict[str, str]) -> tuple[Processes, GraphQL]:
    """The code server, daemon and webserver as deploy/compose.yaml runs them, on loopback ports."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    code_port, web_port = _free_port(), _free_port()
    env = {
        **os.environ,
        **storage,
        "DAGSTER_HOME": str(home),
        "ORGSYNC_CODE_SERVER_HOST": "127.0.0.1",
        "ORGSYNC_CODE_SERVER_PORT": str(code_port),
        "ORGSYNC_WEBHOOK_SENSOR_INTERVAL": "1",
        # The sensor applies every pending event (no receiver here applies them inline).
        "ORGSYNC_WEBHOOK_APPLY": "sensor",
    }
    processes = Processes(tmp_path, env)
    code_server = list(compose_services()["code-server"]["command"])
    code_server[code_server.index("-h") + 1] = "127.0.0.1"
    code_server[code_server.index("-p") + 1] = str(code_port)
    processes.start("code-server", *code_server)
    workspace = str(DEPLOY / "workspace.yaml")
    processes.start("dagster-daemon", "dagster-daemon", "run", "-w", workspace)
    processes.start(
        "dagster-webserver", "dagster-webserver", "-h", "127.0.0.1", "-p", str(web_port), "-w", workspace
    )
    return processes, GraphQL(f"http://127.0.0.1:{web_port}/graphql")


def runs_of(graphql: GraphQL, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    results = graphql(RUNS, filter={"runIds": run_ids})["runsOrError"]["results"]
    return {run["runId"]: run for run in results}


def test_the_instance_runs_the_sensor_and_never_overlaps_two_full_syncs(
    tmp_path: Path, dagster_storage: dict[str, str], emulator: ClerkEmulator, engine: Engine
) -> None:
    """deploy/dagster.yaml on PostgreSQL: a second clerk_full_sync waits QUEUED while the first runs
    (the daemon's queue enforces the tag limit), and the sensor applies an inbox event."""
    emulator.seed_sample(organizations=3, users=6, memberships_per_org=2)
    # The first listing answers after 6 s, so the first run is surely still going when we look.
    emulator.inject_fault("/organizations", 200, times=1, delay_seconds=6)
    processes, graphql = start_instance(tmp_path, dagster_storage)
    try:
        wait_for(lambda: location_loaded(graphql), 60, processes, "the webserver to load the code server")
        first, second = launch_full_sync(graphql), launch_full_sync(graphql)

        org = emulator.create_organization("Delivered By Webhook")
        with engine.begin() as conn:
            envelope = emulator.event_envelope("organization.created", org)
            inbox.store_event(conn, svix_id=f"msg_{uuid.uuid4().hex}", payload=envelope, handled=True)

        seen: set[tuple[str, str]] = set()

        def both_done() -> bool:
            runs = runs_of(graphql, [first, second])
            seen.add((runs[first]["status"], runs[second]["status"]))
            return all(run["status"] in {"SUCCESS", "FAILURE", "CANCELED"} for run in runs.values())

        wait_for(both_done, 75, processes, "both clerk_full_sync runs to end")
        runs = runs_of(graphql, [first, second])
        assert [runs[first]["status"], runs[second]["status"]] == ["SUCCESS", "SUCCESS"], processes.logs()
        assert all({"key": "orgsync/full-sync", "value": "1"} in run["tags"] for run in runs.values())
        earlier, later = sorted(runs.values(), key=lambda run: run["startTime"])
        assert later["startTime"] >= earlier["endTime"], (runs, seen)
        assert ("STARTED", "QUEUED") in seen or ("QUEUED", "STARTED") in seen, seen

        def applied() -> bool:
            with engine.connect() as conn:
                return conn.execute(
                    sa.select(organizations.c.name).where(organizations.c.id == org["id"])
                ).scalar_one_or_none() == "Delivered By Webhook" and conn.execute(
                    sa.select(webhook_inbox.c.status)
                ).scalars().all() == ["applied"]

        wait_for(applied, 30, processes, "the sensor's run to apply the inbox event")
        sensor_runs = graphql(
            RUNS, filter={"tags": [{"key": "dagster/sensor_name", "value": "clerk_webhook_sensor"}]}
        )
        statuses = [run["status"] for run in sensor_runs["runsOrError"]["results"]]
        assert "SUCCESS" in statuses, statuses
    finally:
        processes.stop_all()
