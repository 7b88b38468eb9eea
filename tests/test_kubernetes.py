"""The Kubernetes manifests of a service baked with ``kubernetes=yes``, checked offline.

kustomize is not installed here, so ``render`` below builds the base the way ``kubectl apply -k``
would for the few kustomization fields the base uses (resources, a ConfigMap generator from
literals, an image override) and refuses any other field, so that it can never silently skip
something. Every object is then validated against the Kubernetes OpenAPI schemas shipped by
``kubernetes-validate``, in strict mode (an unknown or misspelt field fails), for the oldest
Kubernetes the manifests support and the newest the package ships; and the values that keep the
service alive are asserted: probes, the shutdown budget, the security context, the Secret, the
migration Job, and what the Service, the PodDisruptionBudget and the autoscaler point at.

The environment the manifests give the container is also fed to the service's own ``Settings``
(in a subprocess, on the baked package), so a production setting the manifests forget, or a value
the service would refuse, fails here and not at the first deploy.

Each check is a function of the rendered objects; the last test breaks the manifests one way at
a time and requires the matching check to fail, so none of them can pass vacuously.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from .conftest import UNRENDERED, Baker, bake_into

# 1.30: the oldest Kubernetes the manifests support (the preStop sleep action is on by default
# from there); 1.37: the newest schema kubernetes-validate 1.37 ships. Pinned, not "latest", so
# that a new release of the package cannot change what passes.
SCHEMA_VERSIONS = ("1.30.0", "1.37.0")
K8S_DIR = Path("deploy") / "kubernetes"
SECRET_EXAMPLE = "secret.yaml.example"  # shipped beside the base, never applied by it
KUSTOMIZATION_FIELDS = frozenset(
    {"apiVersion", "kind", "resources", "configMapGenerator", "images"}
)
BASE_KINDS = [
    "ConfigMap",
    "Deployment",
    "HorizontalPodAutoscaler",
    "Job",
    "PodDisruptionBudget",
    "Service",
]
# Kubernetes names: a Service is an RFC 1035 label; the rest here are RFC 1123 labels.
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")

Object = dict[str, Any]


# ---------------------------------------------------------------------------- rendering


def load_documents(path: Path) -> list[Object]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def pod_specs(objects: list[Object]) -> Iterator[tuple[Object, Object]]:
    """(workload, pod spec) of every object that runs pods."""
    for obj in objects:
        if obj["kind"] in {"Deployment", "Job"}:
            yield obj, obj["spec"]["template"]["spec"]


def containers_of(pod_spec: Object) -> list[Object]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def render(folder: Path) -> list[Object]:
    """The objects ``kubectl apply -k folder`` would send (without kustomize's name hashes)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    assert not unknown, f"render() does not implement kustomization fields {sorted(unknown)}"
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"

    objects: list[Object] = []
    for resource in kustomization["resources"]:
        path = folder / resource
        assert path.is_file(), f"kustomization.yaml lists {resource}, which does not exist"
        objects.extend(load_documents(path))

    for generator in kustomization.get("configMapGenerator", []):
        unsupported = set(generator) - {"name", "literals", "options"}
        assert not unsupported, f"render() does not implement {sorted(unsupported)}"
        data = {}
        for literal in generator.get("literals", []):
            key, separator, value = literal.partition("=")
            assert separator, f"configMapGenerator literal without '=': {literal!r}"
            assert key not in data, f"{key} twice in {generator['name']}"
            data[key] = value
        metadata: Object = {"name": generator["name"]}
        labels = generator.get("options", {}).get("labels")
        if labels:
            metadata["labels"] = labels
        objects.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
        )

    for image in kustomization.get("images", []):
        assert set(image) <= {"name", "newName", "newTag"}, image
        replaced = 0
        for _, pod_spec in pod_specs(objects):
            for container in containers_of(pod_spec):
                name = re.split(r"[:@]", container["image"], maxsplit=1)[0]
                if name == image["name"]:
                    new_name = image.get("newName", name)
                    tag = image.get("newTag")
                    container["image"] = f"{new_name}:{tag}" if tag else new_name
                    replaced += 1
        assert replaced, f"the image override {image['name']!r} matches no container"
    return objects


@dataclass
class Base:
    """The rendered base, one object of each kind, and the example Secret beside it."""

    objects: list[Object]
    secret: Object

    def one(self, kind: str) -> Object:
        (found,) = [obj for obj in self.objects if obj["kind"] == kind]
        return found

    def container(self, kind: str) -> Object:
        (container,) = self.one(kind)["spec"]["template"]["spec"]["containers"]
        return container

    def pod_spec(self, kind: str) -> Object:
        pod_spec: Object = self.one(kind)["spec"]["template"]["spec"]
        return pod_spec


def load_base(project: Path) -> Base:
    folder = project / K8S_DIR
    (secret,) = load_documents(folder / SECRET_EXAMPLE)
    return Base(render(folder), secret)


# ---------------------------------------------------------------------------- the service


@dataclass(frozen=True)
class Project:
    """What the manifests must agree with, read from the baked service itself."""

    path: Path
    slug: str
    package: str
    image_uid: int
    exit_margin: float  # how long past SHUTDOWN_GRACE the process may live (its watchdog)


IMAGE_UID = 10001  # the Dockerfile's unprivileged user; checked against the Dockerfile below


def read_project(path: Path) -> Project:
    (package,) = [p.name for p in (path / "src").iterdir() if (p / "__init__.py").is_file()]
    margin = run_python(path, {}, f"from {package}.__main__ import EXIT_MARGIN as value")
    return Project(path, path.name, package, IMAGE_UID, float(margin))


def run_python(project: Path, env: dict[str, str], code: str) -> Any:
    """Run ``code`` on the baked package with exactly ``env``; return its ``value`` (JSON)."""
    program = f"import json\n{code}\nprint(json.dumps(value))"
    environment = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(project / "src"), **env}
    finished = subprocess.run(
        [sys.executable, "-c", program],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    return json.loads(finished.stdout.strip().splitlines()[-1])


def container_env(base: Base, container: Object) -> dict[str, str]:
    """The environment a container gets: its ConfigMaps, then its own variables; values from
    the Secret are taken from the example Secret (an optional key it lacks stays unset)."""
    configmaps = {
        obj["metadata"]["name"]: obj for obj in base.objects if obj["kind"] == "ConfigMap"
    }
    secret_data = base.secret.get("stringData", {})
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        assert ref in configmaps, f"envFrom names the ConfigMap {ref}, which the base lacks"
        env.update(configmaps[ref]["data"])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
            continue
        secret_ref = variable["valueFrom"]["secretKeyRef"]
        if secret_ref["key"] in secret_data:
            env[variable["name"]] = secret_data[secret_ref["key"]]
        else:
            assert secret_ref.get("optional"), f"{variable['name']}: no such key in the Secret"
    return env


SETTINGS_FIELDS = (
    "environment",
    "host",
    "port",
    "shutdown_grace",
    "request_timeout",
    "readiness_timeout",
    "db_statement_timeout",
)


def service_settings(project: Project, env: dict[str, str]) -> dict[str, Any]:
    """The service's own Settings, built from ``env`` as the container would build them."""
    fields = ", ".join(repr(name) for name in SETTINGS_FIELDS)
    code = (
        f"from {project.package}.settings import Settings\n"
        "settings = Settings()\n"
        f"value = {{name: getattr(settings, name) for name in ({fields},)}}"
    )
    settings: dict[str, Any] = run_python(project.path, env, code)
    return settings


# ---------------------------------------------------------------------------- checks


def check_kustomization_lists_the_manifests(folder: Path) -> None:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = kustomization["resources"]
    present = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
    assert len(listed) == len(set(listed)), f"listed twice: {listed}"
    assert set(listed) == present, "kustomization.yaml must list exactly the manifests present"
    others = {p.name for p in folder.iterdir()} - present - {"kustomization.yaml"}
    assert others == {SECRET_EXAMPLE}, f"files that are neither listed nor the example: {others}"


def check_schemas(base: Base, version: str) -> None:
    assert sorted(obj["kind"] for obj in base.objects) == BASE_KINDS
    for obj in [*base.objects, base.secret]:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = "/".join(str(part) for part in error.absolute_path)
            message = f"{name} against Kubernetes {version}: {where}: {error.message}"
            raise AssertionError(message) from error


def check_settings(project: Project, base: Base) -> dict[str, dict[str, Any]]:
    """Both workloads' environments are accepted by the service, in production mode."""
    effective = {}
    for kind in ("Deployment", "Job"):
        settings = service_settings(project, container_env(base, base.container(kind)))
        assert settings["environment"] == "production", kind
        effective[kind] = settings
    return effective


def probe_port(container: Object, probe: Object) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def check_probes(base: Base, settings: dict[str, Any]) -> None:
    container = base.container("Deployment")
    paths = {
        kind: container[kind]["httpGet"]["path"]
        for kind in ("readinessProbe", "livenessProbe", "startupProbe")
    }
    assert paths == {
        "readinessProbe": "/health/ready",
        "livenessProbe": "/health/live",
        "startupProbe": "/health/live",
    }
    assert settings["host"] == "0.0.0.0"
    for kind in paths:
        assert probe_port(container, container[kind]) == settings["port"], kind
    # The readiness endpoint answers 503 itself after READINESS_TIMEOUT; the probe must wait
    # longer than that, or a slow database reads as a probe timeout.
    assert container["readinessProbe"]["timeoutSeconds"] > settings["readiness_timeout"]
    # Liveness tolerates a slow moment: it restarts only after several misses in a row.
    liveness = container["livenessProbe"]
    assert liveness["failureThreshold"] * liveness["periodSeconds"] >= 20


def check_shutdown_budget(base: Base, settings: dict[str, Any], exit_margin: float) -> None:
    container = base.container("Deployment")
    pre_stop = container["lifecycle"]["preStop"]
    # The native sleep action: no shell or sleep binary needed in the image.
    assert set(pre_stop) == {"sleep"}, pre_stop
    pause = pre_stop["sleep"]["seconds"]
    assert pause >= 5, "too short for the endpoint removal to reach the proxies"
    grace = base.pod_spec("Deployment")["terminationGracePeriodSeconds"]
    shutdown = settings["shutdown_grace"]
    # The kubelet counts the grace from the start of preStop; the service exits at most
    # SHUTDOWN_GRACE + its watchdog margin after SIGTERM.
    assert grace > pause + shutdown + max(2.0, exit_margin), (grace, pause, shutdown)
    # A request admitted just before SIGTERM can run for a whole REQUEST_TIMEOUT.
    assert shutdown >= settings["request_timeout"]


def effective_security(pod_spec: Object, container: Object) -> Object:
    """The container's security settings, with the pod-level ones it inherits."""
    merged = dict(pod_spec.get("securityContext", {}))
    merged.update(container.get("securityContext", {}))
    return merged


def check_security(base: Base, image_uid: int) -> None:
    for workload, pod_spec in pod_specs(base.objects):
        name = workload["kind"]
        assert pod_spec.get("automountServiceAccountToken") is False, name
        assert pod_spec.get("enableServiceLinks") is False, name
        assert not pod_spec.get("hostNetwork"), name
        assert not pod_spec.get("hostPID"), name
        for volume in pod_spec.get("volumes", []):
            assert "hostPath" not in volume, name
        for container in containers_of(pod_spec):
            security = effective_security(pod_spec, container)
            where = f"{name}/{container['name']}"
            assert security.get("runAsNonRoot") is True, where
            assert security.get("runAsUser") == image_uid, where
            assert security.get("runAsGroup") == image_uid, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("privileged", False) is False, where
            assert security.get("capabilities") == {"drop": ["ALL"]}, where
            assert security.get("seccompProfile") == {"type": "RuntimeDefault"}, where


def check_secret(base: Base) -> None:
    assert not [obj for obj in base.objects if obj["kind"] == "Secret"], (
        "the base must not carry a Secret: applying it would overwrite the real one"
    )
    secret_name = base.secret["metadata"]["name"]
    for kind in ("Deployment", "Job"):
        container = base.container(kind)
        (database_url,) = [v for v in container["env"] if v["name"] == "DATABASE_URL"]
        assert "value" not in database_url, f"{kind}: DATABASE_URL in plain text"
        ref = database_url["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret_name, "key": "DATABASE_URL"}, kind
        configmaps = [obj for obj in base.objects if obj["kind"] == "ConfigMap"]
        assert not [c for c in configmaps if "DATABASE_URL" in c.get("data", {})], kind
    # The example holds a placeholder, never something that looks like a real password.
    example = base.secret["stringData"]["DATABASE_URL"]
    assert example.startswith("postgresql+asyncpg://")
    assert "PASSWORD" in example


def check_migration_job(project: Project, base: Base, settings: dict[str, Any]) -> None:
    job = base.one("Job")
    container = base.container("Job")
    assert container["command"] == ["python", "-m", project.package, "migrate"]
    assert container["image"] == base.container("Deployment")["image"]
    spec = job["spec"]
    assert base.pod_spec("Job")["restartPolicy"] == "Never"
    assert 1 <= spec["backoffLimit"] <= 5
    assert spec.get("ttlSecondsAfterFinished", 0) > 0, "finished Jobs would pile up"
    # A migration may run long statements, but not forever.
    assert spec.get("activeDeadlineSeconds", 0) > settings["db_statement_timeout"]
    assert settings["db_statement_timeout"] >= 60
    assert "lifecycle" not in container
    assert "readinessProbe" not in container


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def check_targets(base: Base) -> None:
    deployment = base.one("Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    job_pod_labels = base.one("Job")["spec"]["template"]["metadata"]["labels"]
    assert selects(selector, pod_labels)
    assert not selects(selector, job_pod_labels), "the Deployment would adopt the Job's pod"

    service = base.one("Service")
    assert service["spec"]["selector"] == selector
    (port,) = service["spec"]["ports"]
    container = base.container("Deployment")
    assert probe_port(container, {"httpGet": {"port": port["targetPort"]}}) == int(
        container["ports"][0]["containerPort"]
    )

    pdb = base.one("PodDisruptionBudget")
    assert pdb["spec"]["selector"] == {"matchLabels": selector}

    hpa = base.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource"
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    # The autoscaler owns the replica count; two at least, and a drain can always evict one.
    assert "replicas" not in deployment["spec"]
    assert hpa["spec"]["minReplicas"] >= 2
    assert pdb["spec"]["maxUnavailable"] >= 1
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def check_resources(base: Base) -> None:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for workload, pod_spec in pod_specs(base.objects):
        for container in containers_of(pod_spec):
            resources = container["resources"]
            where = f"{workload['kind']}/{container['name']}"
            assert {"cpu", "memory"} <= set(resources["requests"]), where
            assert "memory" in resources["limits"], where
            memory = {
                kind: int(resources[kind]["memory"][:-2]) * units[resources[kind]["memory"][-2:]]
                for kind in ("requests", "limits")
            }
            assert memory["requests"] <= memory["limits"], where


def check_names(project: Project, base: Base) -> None:
    for obj in [*base.objects, base.secret]:
        name = obj["metadata"]["name"]
        pattern = DNS_1035_LABEL if obj["kind"] == "Service" else DNS_1123_LABEL
        assert pattern.match(name), f"{obj['kind']} name {name!r}"
        assert name.startswith(project.slug), name
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name") == project.slug, name
        assert all(LABEL_VALUE.match(value) for value in labels.values()), labels
    for workload, pod_spec in pod_specs(base.objects):
        (container,) = pod_spec["containers"]
        image = container["image"]
        assert re.fullmatch(rf"[\w.-]+(:\d+)?/{re.escape(project.slug)}:[\w.-]+", image), image
        if workload["kind"] == "Deployment":
            assert container["command"] == ["python", "-m", project.package]


# ---------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    path = bake_into(
        tmp_path_factory.mktemp("k8s"),
        kubernetes="yes",
        use_docker="yes",
        project_name="Billing API",
    )
    return read_project(path)


@pytest.fixture(scope="module")
def base(project: Project) -> Base:
    return load_base(project.path)


def test_manifests_are_rendered_and_listed(project: Project) -> None:
    folder = project.path / K8S_DIR
    for path in folder.iterdir():
        leftover = UNRENDERED.search(path.read_text(encoding="utf-8"))
        assert leftover is None, f"{path.name}: unrendered Jinja near {leftover.group()!r}"
    check_kustomization_lists_the_manifests(folder)


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_object_is_valid_in_strict_mode(base: Base, version: str) -> None:
    check_schemas(base, version)


def test_the_service_accepts_the_configuration_and_the_values_agree(
    project: Project, base: Base
) -> None:
    settings = check_settings(project, base)

    check_probes(base, settings["Deployment"])
    check_shutdown_budget(base, settings["Deployment"], project.exit_margin)
    check_migration_job(project, base, settings["Job"])


def test_security_secret_targets_resources_and_names(project: Project, base: Base) -> None:
    # The uid the manifests run as is the one the Dockerfile creates and switches to.
    dockerfile = (project.path / "Dockerfile").read_text(encoding="utf-8")
    assert f"USER {project.image_uid}:{project.image_uid}" in dockerfile
    assert f"--uid {project.image_uid}" in dockerfile

    check_security(base, project.image_uid)
    check_secret(base)
    check_targets(base)
    check_resources(base)
    check_names(project, base)


def test_the_readme_walks_through_the_deploy(project: Project, base: Base) -> None:
    readme = (project.path / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Deploy on Kubernetes", 1)[1].split("\n## ", 1)[0]
    job = base.one("Job")["metadata"]["name"]
    secret = base.secret["metadata"]["name"]
    for expected in (
        "kubectl apply -k deploy/kubernetes",
        f"kubectl create secret generic {secret}",
        f"kubectl delete job {job} --ignore-not-found",
        "kubectl wait --for=condition=complete",
        f"job/{job}",
        "docker push",
    ):
        assert expected in section, expected
    # The numbers the README explains are the manifests' numbers.
    container = base.container("Deployment")
    grace = base.pod_spec("Deployment")["terminationGracePeriodSeconds"]
    assert f"{container['lifecycle']['preStop']['sleep']['seconds']} s" in section
    assert f"{grace} s" in section


@pytest.mark.parametrize(
    ("kubernetes", "use_docker"),
    [
        pytest.param("yes", "no", id="k8s-without-docker"),
        pytest.param("no", "yes", id="no-k8s"),
    ],
)
def test_the_folder_follows_the_option(bake: Baker, kubernetes: str, use_docker: str) -> None:
    project = bake(kubernetes=kubernetes, use_docker=use_docker)
    readme = (project / "README.md").read_text(encoding="utf-8")

    if kubernetes == "no":
        assert not (project / "deploy").exists()
        assert "## Deploy on Kubernetes" not in readme
        assert "deploy/kubernetes" not in readme
        return
    # Without the Dockerfile the manifests are still complete and valid; the README says which
    # image they expect.
    check_kustomization_lists_the_manifests(project / K8S_DIR)
    check_schemas(load_base(project), SCHEMA_VERSIONS[0])
    assert "## Deploy on Kubernetes" in readme
    assert "uid 10001" in readme.split("## Deploy on Kubernetes", 1)[1]


def test_names_fit_with_the_longest_slug_kubernetes_allows(bake: Baker) -> None:
    slug = "a" + "-b" * 27  # 55 characters: the Job is '<slug>-migrate', 63
    path = bake(kubernetes="yes", project_slug=slug, package_name="svc")
    project = Project(path, slug, "svc", IMAGE_UID, 1.5)
    base = load_base(path)

    assert len(base.one("Job")["metadata"]["name"]) == 63
    check_names(project, base)
    check_schemas(base, SCHEMA_VERSIONS[-1])


# ---------------------------------------------------------------------------- the checks can fail

Mutation = Callable[[Base], None]


def set_in(kind: str, *path: str | int, value: Any = None, delete: bool = False) -> Mutation:
    def mutate(base: Base) -> None:
        target: Any = base.one(kind) if kind != "Secret" else base.secret
        for key in path[:-1]:
            target = target[key]
        if delete:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return mutate


def env_var(kind: str, name: str, variable: Object) -> Mutation:
    def mutate(base: Base) -> None:
        env = base.container(kind)["env"]
        env[:] = [v for v in env if v["name"] != name] + [variable]

    return mutate


POD = ("spec", "template", "spec")
APP = (*POD, "containers", 0)


def run_check(name: str, project: Project, base: Base) -> None:
    if name == "schema":
        check_schemas(base, SCHEMA_VERSIONS[0])
    elif name == "settings":
        check_settings(project, base)
    elif name == "probes":
        check_probes(base, check_settings(project, base)["Deployment"])
    elif name == "budget":
        settings = check_settings(project, base)["Deployment"]
        check_shutdown_budget(base, settings, project.exit_margin)
    elif name == "job":
        check_migration_job(project, base, check_settings(project, base)["Job"])
    elif name == "security":
        check_security(base, project.image_uid)
    elif name == "secret":
        check_secret(base)
    elif name == "targets":
        check_targets(base)
    elif name == "resources":
        check_resources(base)
    else:
        assert name == "names"
        check_names(project, base)


BREAKAGES = [
    pytest.param("schema", set_in("Deployment", *APP, "securityContext",
                 "readOnlyRootFileSystem", value=True), id="schema-misspelt-field"),
    pytest.param("schema", set_in("Deployment", *APP, "ports", 0, "containerPort",
                 value="8000"), id="schema-port-as-string"),
    pytest.param("settings", lambda base: base.one("ConfigMap")["data"].pop("NOTIFIER_URL"),
                 id="settings-notifier-url-missing"),
    pytest.param("probes", set_in("Deployment", *APP, "readinessProbe", "httpGet", "path",
                 value="/health/live"), id="probes-readiness-on-liveness"),
    pytest.param("probes", set_in("Deployment", *APP, "livenessProbe", "httpGet", "port",
                 value=8080), id="probes-wrong-port"),
    pytest.param("probes", env_var("Deployment", "HOST", {"name": "HOST", "value": "127.0.0.1"}),
                 id="probes-listening-on-loopback"),
    pytest.param("probes", set_in("Deployment", *APP, "readinessProbe", "timeoutSeconds",
                 value=1), id="probes-readiness-timeout-not-above-the-deadline"),
    pytest.param("budget", set_in("Deployment", *POD, "terminationGracePeriodSeconds",
                 value=32), id="budget-grace-equal-to-the-sum"),
    pytest.param("budget", env_var("Deployment", "SHUTDOWN_GRACE",
                 {"name": "SHUTDOWN_GRACE", "value": "30"}), id="budget-shutdown-grace-raised"),
    pytest.param("budget", set_in("Deployment", *APP, "lifecycle", "preStop",
                 value={"exec": {"command": ["sleep", "10"]}}), id="budget-prestop-needs-a-shell"),
    pytest.param("budget", set_in("Deployment", *APP, "lifecycle", "preStop", "sleep",
                 "seconds", value=20), id="budget-prestop-raised"),
    pytest.param("security", set_in("Deployment", *POD, "securityContext", "runAsUser",
                 value=0), id="security-root"),
    pytest.param("security", set_in("Deployment", *APP, "securityContext",
                 "readOnlyRootFilesystem", value=False), id="security-writable-root"),
    pytest.param("security", set_in("Deployment", *APP, "securityContext",
                 "allowPrivilegeEscalation", value=True), id="security-escalation"),
    pytest.param("security", set_in("Deployment", *APP, "securityContext", "capabilities",
                 value={"drop": ["NET_RAW"]}), id="security-capabilities-kept"),
    pytest.param("security", set_in("Deployment", *POD, "securityContext", "seccompProfile",
                 delete=True), id="security-no-seccomp"),
    pytest.param("security", set_in("Job", *POD, "securityContext", delete=True),
                 id="security-job-without-pod-context"),
    pytest.param("security", set_in("Job", *POD, "automountServiceAccountToken", value=True),
                 id="security-job-mounts-a-token"),
    pytest.param("secret", env_var("Deployment", "DATABASE_URL", {"name": "DATABASE_URL",
                 "value": "postgresql+asyncpg://app:app@db/app"}), id="secret-url-in-plain-text"),
    pytest.param("secret", env_var("Job", "DATABASE_URL", {"name": "DATABASE_URL", "valueFrom":
                 {"secretKeyRef": {"name": "other", "key": "DATABASE_URL"}}}),
                 id="secret-job-reads-another-secret"),
    pytest.param("secret", lambda base: base.objects.append(copy.deepcopy(base.secret)),
                 id="secret-in-the-base"),
    pytest.param("job", set_in("Job", *APP, "command", value=["python", "-m", "billing_api"]),
                 id="job-serves-instead-of-migrating"),
    pytest.param("job", set_in("Job", "spec", "ttlSecondsAfterFinished", delete=True),
                 id="job-kept-forever"),
    pytest.param("job", set_in("Job", *POD, "restartPolicy", value="OnFailure"),
                 id="job-restarts-in-place"),
    pytest.param("job", set_in("Job", *APP, "image", value="registry.example.com/other:1"),
                 id="job-another-image"),
    pytest.param("job", env_var("Job", "DB_STATEMENT_TIMEOUT",
                 {"name": "DB_STATEMENT_TIMEOUT", "value": "5"}),
                 id="job-request-statement-timeout"),
    pytest.param("targets", set_in("PodDisruptionBudget", "spec", "selector", "matchLabels",
                 "app.kubernetes.io/component", value="migration"),
                 id="targets-pdb-selects-the-job"),
    pytest.param("targets", set_in("HorizontalPodAutoscaler", "spec", "scaleTargetRef", "name",
                 value="other"), id="targets-hpa-scales-another-deployment"),
    pytest.param("targets", set_in("Service", "spec", "selector", "app.kubernetes.io/component",
                 delete=True), id="targets-service-selects-the-job-too"),
    pytest.param("targets", set_in("Service", "spec", "ports", 0, "targetPort", value=9000),
                 id="targets-service-wrong-port"),
    pytest.param("targets", set_in("Deployment", "spec", "replicas", value=3),
                 id="targets-replicas-fight-the-autoscaler"),
    pytest.param("targets", set_in("HorizontalPodAutoscaler", "spec", "minReplicas", value=1),
                 id="targets-single-replica"),
    pytest.param("resources", set_in("Deployment", *APP, "resources", "requests", "cpu",
                 delete=True), id="resources-no-cpu-request"),
    pytest.param("resources", set_in("Job", *APP, "resources", "limits", "memory",
                 value="128Mi"), id="resources-limit-below-request"),
    pytest.param("names", set_in("Service", "metadata", "name", value="2048-billing"),
                 id="names-service-starting-with-a-digit"),
    pytest.param("names", set_in("Deployment", *APP, "image", value="billing-api"),
                 id="names-image-without-registry-and-tag"),
]  # fmt: skip


@pytest.mark.parametrize(("check", "breakage"), BREAKAGES)
def test_each_check_fails_on_a_broken_manifest(
    project: Project, base: Base, check: str, breakage: Mutation
) -> None:
    run_check(check, project, base)  # passes as shipped
    broken = copy.deepcopy(base)
    breakage(broken)

    with pytest.raises(AssertionError):
        run_check(check, project, broken)


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param("unlisted", id="a-manifest-not-listed"),
        pytest.param("missing", id="a-listed-manifest-missing"),
    ],
)
def test_the_file_list_check_fails(project: Project, tmp_path: Path, breakage: str) -> None:
    folder = tmp_path / "kubernetes"
    shutil.copytree(project.path / K8S_DIR, folder)
    check_kustomization_lists_the_manifests(folder)
    if breakage == "unlisted":
        (folder / "network-policy.yaml").write_text("kind: NetworkPolicy\n")
    else:
        (folder / "service.yaml").unlink()

    with pytest.raises(AssertionError):
        check_kustomization_lists_the_manifests(folder)
