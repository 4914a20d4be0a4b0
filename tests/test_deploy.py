"""What ships to production, checked without a container runtime or a cluster.

- The Kubernetes manifests under deploy/: the base and every overlay rendered as
  `kubectl apply -k` would (a small renderer of the kustomize features they use: resources,
  namespace, images, strategic-merge patches), each object validated against the bundled
  Kubernetes JSON schemas (kubernetes-validate, strict: an unknown field is an error), then
  the production rules: security contexts, probes, replicas, selectors, names that must match.
- The Dockerfile: hadolint, and the facts the deployment relies on.
- The lock: every dependency in pyproject.toml pinned, hashed and within its range.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cds.knowledge import load_knowledge
from cds.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
OVERLAYS = sorted(p.parent for p in (DEPLOY / "overlays").glob("*/kustomization.yaml"))
KUSTOMIZATIONS = [DEPLOY / "base", *OVERLAYS]
# The oldest Kubernetes still supported by the major distributions, and the newest schemas.
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]

Obj = dict[str, Any]

# --- a renderer for the kustomize features deploy/ uses ------------------------------------

CLUSTER_SCOPED = {"Namespace"}
# Strategic-merge keys of the lists the patches touch (as in the Kubernetes API); any
# other list, or one whose items lack the key, is replaced whole — as kustomize does.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
}
SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}


def _merge(base: Any, patch: Any, field: str | None = None) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value, key) if key in base else copy.deepcopy(value)
        return merged
    key = MERGE_KEYS.get(field or "")
    if (
        key
        and isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and key in i for i in [*base, *patch])
    ):
        merged_list = [copy.deepcopy(i) for i in base]
        for item in patch:
            at = next((n for n, b in enumerate(merged_list) if b[key] == item[key]), None)
            if at is None:
                merged_list.append(copy.deepcopy(item))
            else:
                merged_list[at] = _merge(merged_list[at], item)
        return merged_list
    return copy.deepcopy(patch)


def _containers(obj: Obj) -> Iterator[Obj]:
    spec = obj.get("spec", {})
    pod = spec.get("template", {}).get("spec") or spec.get("jobTemplate", {}).get("spec", {})
    if "template" in pod:
        pod = pod["template"].get("spec", {})
    yield from pod.get("initContainers", [])
    yield from pod.get("containers", [])


def _load_docs(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render(directory: Path) -> list[Obj]:
    """The objects `kubectl kustomize directory` prints (for the features deploy/ uses)."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(k) - SUPPORTED
    assert not unknown, f"{directory}: kustomize features this test cannot render: {unknown}"
    objects: list[Obj] = []
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        objects += render(path) if path.is_dir() else _load_docs(path)
    for entry in k.get("patches", []):
        assert set(entry) == {"path"}, f"{directory}: only `patches: - path:` is rendered here"
        for patch in _load_docs(directory / entry["path"]):
            targets = [
                n
                for n, o in enumerate(objects)
                if (o["kind"], o["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])
            ]
            assert len(targets) == 1, f"{entry['path']}: patch target not found once"
            objects[targets[0]] = _merge(objects[targets[0]], patch)
    for image in k.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                name = re.split(r"[:@]", container["image"], maxsplit=1)[0]
                if name == image["name"]:
                    new = image.get("newName", name)
                    if "digest" in image:
                        container["image"] = f"{new}@{image['digest']}"
                    else:
                        container["image"] = f"{new}:{image['newTag']}"
    if "namespace" in k:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = k["namespace"]
    return objects


def _by_kind(objects: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _pod_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def _label_id(directory: Path) -> str:
    return str(directory.relative_to(DEPLOY))


def institution_rules_configmap(rules_dir: Path) -> Obj:
    """The ConfigMap `kubectl create configmap crs-cds-institution-rules --from-file=DIR`."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "crs-cds-institution-rules", "namespace": "crs"},
        "data": {p.name: p.read_text() for p in sorted(rules_dir.glob("*.yaml"))},
    }


EXAMPLES = sorted((DEPLOY / "examples").glob("*.yaml"))
SECRETS = {
    d["metadata"]["name"]: d
    for d in _load_docs(DEPLOY / "examples" / "secrets.yaml")
    if d["kind"] == "Secret"
}


# --- schemas --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_label_id)
def test_every_rendered_object_is_valid_kubernetes(directory: Path, version: str) -> None:
    objects = render(directory)
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid_kubernetes(path: Path, version: str) -> None:
    for obj in _load_docs(path):
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_institution_rules_configmap_is_valid_fits_and_loads(tmp_path: Path) -> None:
    """Made from rules/ as README "Deploy" says, it passes the schema, stays under the 1 MiB
    object limit, and the service loads it as CRS_RULES_DIR (one file per key)."""
    configmap = institution_rules_configmap(REPO / "rules")
    kubernetes_validate.validate(configmap, K8S_VERSIONS[-1], strict=True)
    assert len(yaml.safe_dump(configmap).encode()) < 1024 * 1024 * 0.9
    for name, text in configmap["data"].items():
        (tmp_path / name).write_text(text)
    load_knowledge(rules_dir=tmp_path)


def test_the_renderer_applies_the_overlay() -> None:
    """Guards the renderer itself: production's patches replaced every placeholder."""
    production = render(DEPLOY / "overlays" / "production")
    text = yaml.safe_dump_all(production)
    assert "192.0.2." not in text
    deployments = _by_kind(production, "Deployment")
    container = _pod_spec(deployments["crs-cds"])["containers"][0]
    assert container["image"] == "registry.hospital.example/crs-cds:0.1.0"
    env = {e["name"] for e in container["env"]}
    assert {"CRS_RULES_DIR", "CRS_DATABASE_URL", "CRS_PSEUDONYM_KEY"} <= env
    assert {o["metadata"].get("namespace") for o in production if o["kind"] != "Namespace"} == {
        "crs"
    }


# --- production rules -----------------------------------------------------------------------

SETTINGS = {f"CRS_{name.upper()}" for name in Settings.model_fields} | {
    # Settings of the storage, authentication and watch work (issues #10, #11, #12).
    "CRS_DATABASE_URL",
    "CRS_DATA_DIR",
    "CRS_PSEUDONYM_KEY",
    "CRS_TRUSTED_CLIENTS_FILE",
    "CRS_LINK_SIGNING_KEY",
    "CRS_WATCH_FHIR_SERVER",
    "CRS_WATCH_FHIR_TOKEN",
    "CRS_WATCH_POLL_SECONDS",
    "CRS_WATCH_WEBHOOK_URLS",
    "CRS_WATCH_IN_SERVE",
}


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_label_id)
def test_every_pod_runs_locked_down(directory: Path) -> None:
    for obj in render(directory):
        if obj["kind"] not in {"Deployment", "Job"}:
            continue
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        pod = _pod_spec(obj)
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] != 0, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        writable = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), where
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert mounts["/tmp"]["name"] in writable, where
            data_dir = {e["name"]: e.get("value") for e in container["env"]}["CRS_DATA_DIR"]
            assert mounts[data_dir]["name"] in writable, where


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_label_id)
def test_the_service_is_replicated_probed_and_spread(directory: Path) -> None:
    objects = render(directory)
    deployment = _by_kind(objects, "Deployment")["crs-cds"]
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["template"]["metadata"]["labels"].items() >= labels.items()
    pod = _pod_spec(deployment)
    (container,) = pod["containers"]
    assert container["args"] == ["serve"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CRS_PORT"] == str(port) and env["CRS_HOST"] == "0.0.0.0"
    terms = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert terms[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == labels

    (pdb,) = _by_kind(objects, "PodDisruptionBudget").values()
    assert pdb["spec"]["selector"]["matchLabels"] == labels
    (hpa,) = _by_kind(objects, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "crs-cds"
    assert hpa["spec"]["minReplicas"] == 3
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    service = _by_kind(objects, "Service")["crs-cds"]
    assert service["spec"]["selector"] == labels
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    for ingress in _by_kind(objects, "Ingress").values():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] == "crs-cds"
                assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_label_id)
def test_the_worker_and_the_migration_run_their_commands(directory: Path) -> None:
    objects = render(directory)
    (watch,) = _pod_spec(_by_kind(objects, "Deployment")["crs-cds-watch"])["containers"]
    assert watch["args"] == ["watch", "run"]
    (job,) = _pod_spec(_by_kind(objects, "Job")["crs-cds-db-upgrade"])["containers"]
    assert job["args"] == ["db", "upgrade"]
    config = _by_kind(objects, "ConfigMap")["crs-cds-config"]["data"]
    assert config["CRS_WATCH_IN_SERVE"] == "false"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_label_id)
def test_settings_secrets_and_configmaps_are_named_consistently(directory: Path) -> None:
    """Every CRS_ variable is a setting; every Secret key read exists in the example
    Secrets; every ConfigMap read is rendered or is the institution rules."""
    objects = render(directory)
    configmaps = set(_by_kind(objects, "ConfigMap")) | {"crs-cds-institution-rules"}
    for name, configmap in _by_kind(objects, "ConfigMap").items():
        if name == "crs-cds-config":
            assert set(configmap["data"]) <= SETTINGS, set(configmap["data"]) - SETTINGS
    for obj in objects:
        if obj["kind"] not in {"Deployment", "Job"}:
            continue
        pod = _pod_spec(obj)
        for container in pod["containers"]:
            for env in container.get("env", []):
                assert env["name"] in SETTINGS, env["name"]
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in SECRETS[ref["name"]]["stringData"], ref
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps
        for volume in pod["volumes"]:
            if "secret" in volume:
                assert volume["secret"]["secretName"] in SECRETS
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_label_id)
def test_network_policies_deny_by_default_and_allow_dns(directory: Path) -> None:
    policies = _by_kind(render(directory), "NetworkPolicy")
    deny = policies["crs-cds-default-deny"]["spec"]
    assert deny["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "crs-cds"}}
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"} and "ingress" not in deny
    egress = policies["crs-cds-egress-dns-and-database"]["spec"]["egress"]
    assert {p["port"] for rule in egress for p in rule["ports"]} == {53, 5432}
    for policy in policies.values():
        for rule in policy["spec"].get("egress", []):
            for peer in rule["to"]:
                assert "ipBlock" not in peer or "except" not in peer["ipBlock"]
                assert peer.get("ipBlock", {}).get("cidr") != "0.0.0.0/0"


# --- the Dockerfile -------------------------------------------------------------------------


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    done = subprocess.run(
        [str(hadolint), str(REPO / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_runs_the_wheel_as_non_root_with_production_defaults() -> None:
    steps = _instructions(REPO / "Dockerfile")
    final = steps[max(n for n, (op, _) in enumerate(steps) if op == "FROM") :]
    ops = {op: arg for op, arg in final}  # the last of each in the final stage
    run = " ".join(arg for op, arg in final if op == "RUN")
    assert "--require-hashes -r /tmp/runtime.txt" in run
    assert "--no-deps /tmp/dist/crs_cds-" in run
    assert "-e " not in run and "--editable" not in run
    assert ops["USER"].split(":")[0] not in {"0", "root"}
    assert "/healthz" in ops["HEALTHCHECK"]
    env = dict(re.findall(r"(CRS_\w+)=(\S+)", " ".join(a for o, a in final if o == "ENV")))
    assert env["CRS_HOST"] == "0.0.0.0"
    assert ops["EXPOSE"] == env["CRS_PORT"]
    assert env["CRS_DATA_DIR"] in ops["VOLUME"]
    assert ops["ENTRYPOINT"] == '["crs-cds"]' and ops["CMD"] == '["serve"]'


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a directory's pattern covers its files."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = "^" + re.escape(body).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]") + "(/.*)?$"
        if re.match(regex, path):
            excluded = not negate
    return excluded


def test_the_build_context_holds_every_file_the_wheel_is_built_from(tmp_path: Path) -> None:
    """The image builds the wheel from what .dockerignore lets in and the build stage
    COPYs: every file of the sdist (what a wheel is built from) must get through."""
    uv = Path(sys.executable).parent / "uv"
    subprocess.run(
        [str(uv), "build", "--sdist", "--quiet", "--out-dir", str(tmp_path), str(REPO),
         "--build-constraints", str(REPO / "requirements" / "build.txt"), "--require-hashes"],
        check=True, capture_output=True,
    )  # fmt: skip
    (sdist,) = tmp_path.glob("crs_cds-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = [m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()]
    generated = ("PKG-INFO", "setup.cfg", "crs_cds.egg-info/")
    sources = [n for n in names if not n.startswith(generated)]
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    steps = _instructions(REPO / "Dockerfile")
    build_stage = steps[: max(n for n, (op, _) in enumerate(steps) if op == "FROM")]
    copied = [
        src
        for op, arg in build_stage
        if op == "COPY" and "--from" not in arg
        for src in arg.split()[:-1]
    ]
    for name in sources:
        assert not _dockerignore_excludes(name, patterns), f"{name} is kept out by .dockerignore"
        assert any(name == src or name.startswith(src.rstrip("/") + "/") for src in copied), (
            f"{name} is in the sdist but the Dockerfile's build stage does not COPY it"
        )
    assert "rules/ruleset.yaml" in sources and "fhir_mappings/observations.yaml" in sources


# --- the lock -------------------------------------------------------------------------------


def _locked(path: Path) -> dict[str, tuple[str, int]]:
    """name → (version, number of hashes) of a uv/pip-tools lock file."""
    pins: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=\S)", path.read_text()):
        match = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", block)
        if match:
            pins[canonicalize_name(match[1])] = (match[2], block.count("--hash=sha256:"))
    return pins


def test_the_lock_pins_every_dependency_with_hashes() -> None:
    """Fails when pyproject.toml gained or changed a dependency without `scripts/lock`."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = _locked(REPO / "requirements" / "runtime.txt")
    dev = _locked(REPO / "requirements" / "dev.txt")
    wanted = [(runtime, r) for r in project["dependencies"]]
    wanted += [(dev, r) for r in project["optional-dependencies"]["dev"]]
    for lock, line in wanted:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{requirement.name} is not in the lock: run scripts/lock"
        assert requirement.specifier.contains(lock[name][0], prereleases=True), (
            f"{requirement.name} {lock[name][0]} does not satisfy {line}: run scripts/lock"
        )
    for lock in (runtime, dev):
        assert all(hashes > 0 for _, hashes in lock.values())
    assert {n: v for n, (v, _) in runtime.items()} == {n: dev[n][0] for n in runtime}, (
        "runtime.txt and dev.txt disagree: run scripts/lock"
    )
