"""The Kubernetes manifests in deploy/kubernetes: valid, consistent with each other, the image
and the daemon's settings.

Checked offline: every rendered resource against the Kubernetes JSON schemas bundled by
`kubernetes-validate` (strict: an unknown or misspelled field fails), the ServiceMonitor and the
PrometheusRule (CRDs without a bundled schema) structurally, the PrometheusRule's groups equal to
deploy/monitoring/vaeguard-rules.yml (it is generated from it), and the cross-references a cluster would only reveal at
run time: selectors, ports, probes, volumes, ConfigMap and Secret names, the environment
variables (each a real setting, loaded with the ConfigMap's file by `load_settings`) and the
termination grace against ``shutdown_grace_s``. The kustomizations are rendered here (resources,
the ConfigMap generator, images, the GPU overlay's strategic merge patch); where `kubectl` is
installed, its own `kubectl kustomize` must render the same.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import subprocess
import typing
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel, SecretStr

from vaeguard._version import __version__
from vaeguard.config import ENV_DELIMITER, ENV_PREFIX, Settings, load_settings
from vaeguard.daemon.supervisor import KILL_MARGIN_S, THREAD_VARS

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
GPU = K8S / "overlays" / "gpu"
DOCKERFILE = ROOT / "Dockerfile"
RULES = ROOT / "deploy" / "monitoring" / "vaeguard-rules.yml"
#: The oldest Kubernetes the manifests are for (PodDisruptionBudget.unhealthyPodEvictionPolicy
#: is on by default from 1.27) and the newest whose schemas kubernetes-validate bundles.
K8S_VERSIONS = ("1.27", kubernetes_validate.latest_version())
#: Kinds without a schema in kubernetes-validate (custom resources): checked structurally.
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
#: Secrets the user creates (kustomization.yaml says how); the manifests never hold one.
USER_SECRETS = {"vaeguard-secrets", "vaeguard-kafka-tls"}
#: What a pod's downward API and secret references resolve to when the settings are loaded.
POD_NAME = "vaeguard-0"
SECRET_VALUES = {
    "kafka-sasl-password": "sasl-password",
    "kafka-ssl-password": "key-password",
    "kafka-oauth-client-secret": "oauth-client-secret",
    "state-key": "a-state-key-of-32-characters-xx",
    "alert-sinks": json.dumps(
        [
            {
                "name": "ops-webhook",
                "type": "webhook",
                "url": "https://hooks.example.com/vaeguard",
                "secret": "s3cret",
            }
        ]
    ),
    "s3-access-key-id": "AKIAEXAMPLEKEYID",
    "s3-secret-access-key": "an-s3-secret-key",
}
#: Settings that are not `SecretStr` but come from the Secret all the same: the sinks (their
#: settings are their credentials) and the access key id that goes with an S3 secret key.
FROM_SECRET_TOO = {"VAEGUARD_ALERTS__SINKS", "VAEGUARD_MODEL__S3__ACCESS_KEY_ID"}
#: Variables of the container that are not settings: TensorFlow's thread pools.
NON_SETTING_ENV = set(THREAD_VARS)


# -- rendering: the part of kustomize these kustomizations use ------------------------------------


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _kustomization(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))


def _merge(base: Any, patch: Any) -> Any:
    """A strategic merge patch, as far as these manifests need it: maps merge key by key,
    lists of named items (containers, env, volumes, mounts, ports) merge by name, other lists
    are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    named = lambda items: all(isinstance(i, dict) and "name" in i for i in items)  # noqa: E731
    if isinstance(base, list) and isinstance(patch, list) and named(base) and named(patch):
        out = [copy.deepcopy(i) for i in base]
        index = {item["name"]: n for n, item in enumerate(out)}
        for item in patch:
            if item["name"] in index:
                out[index[item["name"]]] = _merge(out[index[item["name"]]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def _set_images(resources: list[dict[str, Any]], images: list[dict[str, Any]]) -> None:
    for resource in resources:
        pod = resource.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []):
            name, tag = container["image"], ""
            if ":" in name.rpartition("/")[2]:  # a tag, not a registry's port
                name, _, tag = name.rpartition(":")
            for image in images:
                if image["name"] == name:
                    name, tag = image.get("newName", name), image.get("newTag", tag)
            container["image"] = f"{name}:{tag}" if tag else name


def render(folder: Path) -> list[dict[str, Any]]:
    """The resources `kubectl kustomize FOLDER` builds (generated names without their hash)."""
    k = _kustomization(folder)
    resources: list[dict[str, Any]] = []
    for entry in k.get("resources", []):
        path = (folder / entry).resolve()
        resources += render(path) if path.is_dir() else _docs(path)
    for generator in k.get("configMapGenerator", []):
        data = {}
        for item in generator.get("files", []):
            key, _, name = item.rpartition("=")
            data[key or Path(name).name] = (folder / name).read_text(encoding="utf-8")
        labels = generator.get("options", {}).get("labels", {})
        metadata = {"name": generator["name"], **({"labels": labels} if labels else {})}
        resources.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
        )
    for patch in k.get("patches", []):
        body = yaml.safe_load((folder / patch["path"]).read_text(encoding="utf-8"))
        targets = [
            n
            for n, r in enumerate(resources)
            if (r["kind"], r["metadata"]["name"]) == (body["kind"], body["metadata"]["name"])
        ]
        assert len(targets) == 1, f"{patch['path']} matches {len(targets)} resources"
        resources[targets[0]] = _merge(resources[targets[0]], body)
    _set_images(resources, k.get("images", []))
    return resources


VARIANTS = {"cpu": K8S, "gpu": GPU}
RENDERED = {variant: render(folder) for variant, folder in VARIANTS.items()}


def _one(resources: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [r for r in resources if r["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} resources"
    return found[0]


def _pod(resources) -> dict[str, Any]:
    return _one(resources, "StatefulSet")["spec"]["template"]["spec"]


def _container(resources) -> dict[str, Any]:
    (container,) = _pod(resources)["containers"]
    return container


# -- the image: what the Dockerfile says ----------------------------------------------------------


def _dockerfile_env() -> dict[str, str]:
    """The image's ENV (``ENV A=1 \\ B=2`` blocks)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for pair in line[4:].split():
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def _dockerfile_instruction(name: str) -> list[str]:
    match = re.search(rf"^{name} (\[.*\])$", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert match, f"no {name} in the Dockerfile"
    return json.loads(match.group(1))


# -- the settings: what the daemon in the pod reads ------------------------------------------------


def _env_value(var: dict[str, Any], container: dict[str, Any]) -> str | None:
    """What a container variable holds in a running pod (None: unset)."""
    if "value" in var:
        return var["value"]
    source = var["valueFrom"]
    if "fieldRef" in source:
        assert source["fieldRef"]["fieldPath"] == "metadata.name", source
        return POD_NAME
    if "resourceFieldRef" in source:
        ref = source["resourceFieldRef"]
        assert ref["containerName"] == container["name"], ref
        assert ref["resource"] == "limits.cpu", ref
        # The kubelet rounds up to whole cores (the default divisor, 1).
        return str(math.ceil(_quantity(container["resources"]["limits"]["cpu"])))
    if "secretKeyRef" in source:
        return SECRET_VALUES[source["secretKeyRef"]["key"]]
    raise AssertionError(f"unexpected valueFrom {source}")


def _pod_environment(resources, *, secrets: bool = True) -> dict[str, str]:
    """The daemon's environment: the image's ENV, overridden by the container's env."""
    container = _container(resources)
    env = _dockerfile_env()
    for var in container.get("env", []):
        if "secretKeyRef" in var.get("valueFrom", {}) and not secrets:
            env.pop(var["name"], None)
            continue
        value = _env_value(var, container)
        if value is not None:
            env[var["name"]] = value
    return env


def _configmap_file(resources, tmp_path: Path) -> Path:
    """The --config file as the pod sees it: the ConfigMap's key behind the volume mount."""
    container = _container(resources)
    args = container["args"]
    config = PurePosixPath(args[args.index("--config") + 1])
    mount = next(
        m for m in container["volumeMounts"] if config.parent == PurePosixPath(m["mountPath"])
    )
    volume = next(v for v in _pod(resources)["volumes"] if v["name"] == mount["name"])
    configmap = next(
        r
        for r in resources
        if r["kind"] == "ConfigMap" and r["metadata"]["name"] == volume["configMap"]["name"]
    )
    path = tmp_path / config.name
    path.write_text(configmap["data"][config.name], encoding="utf-8")
    return path


def _settings(resources, tmp_path: Path, monkeypatch, *, secrets: bool = True) -> Settings:
    for name in [n for n in os.environ if n.upper().startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in _pod_environment(resources, secrets=secrets).items():
        monkeypatch.setenv(name, value)
    return load_settings(_configmap_file(resources, tmp_path))


def _field(env_name: str):
    """The settings field an environment variable ``VAEGUARD_A__B`` sets (AssertionError if
    none)."""
    assert env_name.startswith(ENV_PREFIX), env_name
    model: Any = Settings
    field = None
    for part in env_name[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER):
        assert isinstance(model, type) and issubclass(model, BaseModel), (
            f"{env_name}: {part!r} is inside a setting that has no fields"
        )
        assert part in model.model_fields, f"{env_name}: no setting {part!r} in {model.__name__}"
        field = model.model_fields[part]
        model = field.annotation
    return field


def _is_secret(annotation) -> bool:
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


def _secret_settings(model: type[BaseModel] = Settings, prefix: str = "") -> set[str]:
    """Environment names of every `SecretStr` setting an environment variable can set alone
    (not those inside lists, such as a sink's: the sinks come whole from one variable)."""
    out = set()
    for name, field in model.model_fields.items():
        env = f"{prefix}{ENV_DELIMITER if prefix else ENV_PREFIX}{name.upper()}"
        if _is_secret(field.annotation):
            out.add(env)
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out |= _secret_settings(field.annotation, env)
    return out


def _leaves(data: Any, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    if isinstance(data, dict) and data:
        return set().union(*(_leaves(v, (*path, str(k))) for k, v in data.items()))
    return {path}


_UNITS = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _quantity(value: Any) -> float:
    match = re.fullmatch(r"([0-9.]+)(m|k|M|G|Ki|Mi|Gi|)", str(value))
    assert match, f"unsupported quantity {value!r}"
    return float(match.group(1)) * _UNITS[match.group(2)]


# -- schemas ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_resource_is_valid_against_the_kubernetes_schemas(variant, version):
    kinds = set()
    for resource in RENDERED[variant]:
        kinds.add(resource["kind"])
        if (resource["apiVersion"], resource["kind"]) in CRDS:
            continue
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(
                f"{resource['kind']}/{resource['metadata']['name']} ({variant}): {exc}"
            ) from None
    assert kinds == {
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
        "ConfigMap",
        "ServiceMonitor",
        "PrometheusRule",
    }


def test_the_schema_check_catches_a_misspelled_field():
    """Strict validation is what makes the test above worth running: a field Kubernetes does
    not know (here a probe's misspelled name) fails."""
    statefulset = copy.deepcopy(_one(RENDERED["cpu"], "StatefulSet"))
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    container["livenessprobe"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="livenessprobe"):
        kubernetes_validate.validate(statefulset, K8S_VERSIONS[0], strict=True)


def test_no_secret_is_committed():
    for path in K8S.rglob("*.yaml"):
        for doc in _docs(path):
            assert doc.get("kind") != "Secret", f"{path} holds a Secret"
            assert "secretGenerator" not in doc, f"{path} generates a Secret"


# -- cross-references ------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_selectors_pick_the_daemons_pods(variant):
    resources = RENDERED[variant]
    statefulset = _one(resources, "StatefulSet")
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    service = _one(resources, "Service")
    pdb = _one(resources, "PodDisruptionBudget")
    for name, selector in [
        ("StatefulSet", statefulset["spec"]["selector"]["matchLabels"]),
        ("Service", service["spec"]["selector"]),
        ("PodDisruptionBudget", pdb["spec"]["selector"]["matchLabels"]),
    ]:
        assert selector, f"{name}: empty selector"
        assert selector.items() <= pod_labels.items(), (
            f"{name} selects {selector}, pods {pod_labels}"
        )
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    # Headless, and not-ready pods listed: Prometheus must scrape a pod that is not ready.
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    # One budget (the API refuses both), and a never-ready replica (more replicas than
    # partitions) must not block a node drain.
    assert len({"maxUnavailable", "minAvailable"} & pdb["spec"].keys()) == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


@pytest.mark.parametrize("variant", VARIANTS)
def test_ports_and_probes_meet_the_daemons_listener(variant, tmp_path, monkeypatch):
    resources = RENDERED[variant]
    container = _container(resources)
    settings = _settings(resources, tmp_path, monkeypatch)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert settings.http.enabled
    assert settings.http.host == "0.0.0.0", "the probes and Prometheus reach the pod's IP"
    assert ports == {"http": settings.http.port}
    exposed = re.search(r"^EXPOSE (\d+)$", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert exposed and int(exposed.group(1)) == settings.http.port
    probes = {
        kind: container[kind]["httpGet"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["startupProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    for kind, probe in probes.items():
        assert probe["port"] in ports, f"{kind} names port {probe['port']!r}"
        # A probe gives up after its own timeout; the listener drops a request after its own.
        assert container[kind]["timeoutSeconds"] <= settings.http.request_timeout_s
    service = _one(resources, "Service")
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports and port["port"] == ports[port["targetPort"]]


def test_the_servicemonitor_scrapes_the_services_metrics_port():
    resources = RENDERED["cpu"]
    monitor = _one(resources, "ServiceMonitor")
    service = _one(resources, "Service")
    assert (monitor["apiVersion"], monitor["kind"]) in CRDS
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    spec = monitor["spec"]
    assert set(spec) <= {"jobLabel", "selector", "endpoints", "namespaceSelector"}
    assert "namespaceSelector" not in spec, "the Service is in the ServiceMonitor's namespace"
    selector = spec["selector"]["matchLabels"]
    assert selector and selector.items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert spec["endpoints"]
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
        assert endpoint["port"] in service_ports
        assert endpoint["path"] == "/metrics"
        seconds = [
            int(re.fullmatch(r"(\d+)s", endpoint[k]).group(1))
            for k in ("interval", "scrapeTimeout")
        ]
        assert 0 < seconds[1] <= seconds[0]
    # The job label is the one the ops mixin's rules select on.
    job = service["metadata"]["labels"][spec["jobLabel"]]
    assert f'job="{job}"' in RULES.read_text(encoding="utf-8")


def _prometheusrule_module():
    import importlib.util

    path = ROOT / "deploy" / "monitoring" / "prometheusrule.py"
    spec = importlib.util.spec_from_file_location("vaeguard_prometheusrule", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: PrometheusRule fields (monitoring.coreos.com/v1, the operator's CRD schema), per level.
RULE_GROUP_FIELDS = {"name", "interval", "rules", "limit", "partial_response_strategy", "labels",
                     "query_offset"}  # fmt: skip
RULE_FIELDS = {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
_DURATION = re.compile(r"(?:[0-9]+(?:ms|s|m|h|d|w|y))+")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_prometheusrule_carries_the_rules_file(variant):
    """The wrapper is generated from vaeguard-rules.yml (so the rules tested with promtool are
    the ones a cluster loads) and has the CRD's shape: the operator's admission webhook would
    refuse a rule with an unknown field or a bad duration."""
    rule = _one(RENDERED[variant], "PrometheusRule")
    assert (rule["apiVersion"], rule["kind"]) in CRDS
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"}
    assert rule["metadata"]["name"] == "vaeguard" and set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    path = K8S / "base" / "prometheusrule.yaml"
    assert path.read_text(encoding="utf-8") == _prometheusrule_module().render(), (
        "run python deploy/monitoring/prometheusrule.py"
    )
    names = [g["name"] for g in rule["spec"]["groups"]]
    assert names and len(names) == len(set(names))
    for group in rule["spec"]["groups"]:
        assert set(group) <= RULE_GROUP_FIELDS and group["rules"], group["name"]
        if "interval" in group:
            assert _DURATION.fullmatch(group["interval"])
        for r in group["rules"]:
            assert set(r) <= RULE_FIELDS, r
            assert ("record" in r) != ("alert" in r), r
            assert isinstance(r["expr"], str | int) and str(r["expr"]).strip(), r
            for key in ("for", "keep_firing_for"):
                assert key not in r or _DURATION.fullmatch(r[key]), r
            for key in ("labels", "annotations"):
                assert all(
                    _LABEL_NAME.fullmatch(k) and isinstance(v, str)
                    for k, v in r.get(key, {}).items()
                ), r
            if "record" in r:
                assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", r["record"]), r
                assert "annotations" not in r and "for" not in r, r


def test_the_prometheusrule_check_catches_a_diverging_copy(tmp_path, monkeypatch):
    """The generator's --check fails when the wrapper is not what the rules file gives."""
    module = _prometheusrule_module()
    out = tmp_path / "prometheusrule.yaml"
    monkeypatch.setattr(module, "OUT", out)
    assert module.main([]) == 0 and module.main(["--check"]) == 0
    out.write_text(out.read_text().replace("for: 10m", "for: 1m", 1))
    assert module.main(["--check"]) == 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_referenced_object_exists_or_is_user_provided(variant):
    resources = RENDERED[variant]
    pod = _pod(resources)
    container = _container(resources)
    names = {(r["kind"], r["metadata"]["name"]) for r in resources}
    claims = {
        t["metadata"]["name"]
        for t in _one(resources, "StatefulSet")["spec"]["volumeClaimTemplates"]
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert not claims & volumes.keys()
    for mount in container["volumeMounts"]:
        assert mount["name"] in volumes or mount["name"] in claims, mount
    assert len({m["mountPath"] for m in container["volumeMounts"]}) == len(
        container["volumeMounts"]
    )
    for volume in volumes.values():
        if "configMap" in volume:
            assert ("ConfigMap", volume["configMap"]["name"]) in names, volume
        if "persistentVolumeClaim" in volume:
            assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names
        if "secret" in volume:
            assert volume["secret"]["secretName"] in USER_SECRETS, volume
            assert volume["secret"]["optional"] is True, volume
    documentation = (K8S / "kustomization.yaml").read_text(encoding="utf-8")
    for var in container["env"]:
        source = var.get("valueFrom", {})
        assert "configMapKeyRef" not in source and "envFrom" not in container
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            assert ref["name"] in USER_SECRETS, ref
            assert ref.get("optional") is True, f"{var['name']}: the pod must start without it"
            assert ref["key"] in SECRET_VALUES, ref
            # kustomization.yaml tells the user which keys to create, and for what.
            assert re.search(rf"\b{re.escape(ref['key'])}\s+{var['name']}\b", documentation), ref
    for secret in USER_SECRETS:
        assert secret in documentation


# -- the daemon's settings -------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variable_set_is_a_real_setting(variant):
    container = _container(RENDERED[variant])
    names = [var["name"] for var in container["env"]]
    assert len(set(names)) == len(names), "a variable set twice"
    for var in container["env"]:
        if var["name"] in NON_SETTING_ENV:
            # a thread count: a positive whole number
            assert _env_value(var, container).isdigit(), var
            assert int(_env_value(var, container)) > 0, var
            continue
        _field(var["name"])  # raises, naming the variable, when it is not a setting


def test_the_setting_resolver_refuses_what_is_not_a_setting():
    assert _field("VAEGUARD_KAFKA__GROUP_INSTANCE_ID").annotation == str | None
    for wrong in ("VAEGUARD_KAFKA__GROUP_INSTANCE", "VAEGUARD_HTTP_PORT", "VAEGUARD_HTTP__PORT__X"):
        with pytest.raises(AssertionError):
            _field(wrong)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_secret_setting_comes_from_a_secret(variant):
    container = _container(RENDERED[variant])
    env = {var["name"]: var for var in container["env"]}
    secret_settings = _secret_settings()
    assert "VAEGUARD_KAFKA__SASL_PLAIN_PASSWORD" in secret_settings  # the walk finds them
    for name in secret_settings:
        assert name in env, f"{name} is not wired to the Secret"
    for name, var in env.items():
        from_secret = "secretKeyRef" in var.get("valueFrom", {})
        if name in secret_settings or name in FROM_SECRET_TOO:
            assert from_secret, f"{name} must come from a Secret, not a literal value"
        else:
            assert not from_secret, f"{name} is not a secret setting"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("secrets", [True, False], ids=["with-secrets", "without-secrets"])
def test_the_configmap_loads_as_the_daemons_settings(variant, secrets, tmp_path, monkeypatch):
    settings = _settings(RENDERED[variant], tmp_path, monkeypatch, secrets=secrets)
    assert settings.kafka.group_instance_id == POD_NAME
    if secrets:
        assert settings.kafka.sasl_plain_password.get_secret_value() == "sasl-password"
        assert [s.name for s in settings.alerts.sinks] == ["ops-webhook"]
    else:
        assert settings.kafka.sasl_plain_password is None
        assert [s.name for s in settings.alerts.sinks] == ["log"]
    assert settings.model.device == ("gpu:0" if variant == "gpu" else "auto")


def test_every_pod_name_is_a_valid_group_instance_id(tmp_path, monkeypatch):
    statefulset = _one(RENDERED["cpu"], "StatefulSet")
    settings = _settings(RENDERED["cpu"], tmp_path, monkeypatch)
    for ordinal in (0, 9, 10_000):
        name = f"{statefulset['metadata']['name']}-{ordinal}"
        monkeypatch.setenv("VAEGUARD_KAFKA__GROUP_INSTANCE_ID", name)
        assert (
            load_settings(_configmap_file(RENDERED["cpu"], tmp_path)).kafka.group_instance_id
            == name
        )
    assert settings.kafka.group_instance_id == POD_NAME


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_configmap_value_is_silently_overridden(variant):
    """A setting in the ConfigMap that the image's ENV or the container's env also sets would
    be ignored (the environment wins): each setting has one place."""
    resources = RENDERED[variant]
    configmap = _one(resources, "ConfigMap")
    (text,) = configmap["data"].values()
    in_file = {".".join(path) for path in _leaves(yaml.safe_load(text))}
    env = _pod_environment(resources)
    from_env = {
        ".".join(name[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER))
        for name in env
        if name.startswith(ENV_PREFIX)
    }
    shadowed = {s for s in in_file for e in from_env if s == e or s.startswith(e + ".")}
    assert not shadowed, f"set in the ConfigMap and overridden by the environment: {shadowed}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_termination_grace_outlasts_the_shutdown_grace(variant, tmp_path, monkeypatch):
    grace = _pod(RENDERED[variant])["terminationGracePeriodSeconds"]
    settings = _settings(RENDERED[variant], tmp_path, monkeypatch)
    default = Settings.model_fields["shutdown_grace_s"].default
    # --workers adds the supervisor's kill margin; the kubelet's SIGKILL must come after both.
    for shutdown_grace_s in (settings.shutdown_grace_s, default):
        assert grace > shutdown_grace_s + KILL_MARGIN_S


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_daemon_writes_only_to_its_volumes(variant, tmp_path, monkeypatch):
    resources = RENDERED[variant]
    statefulset = _one(resources, "StatefulSet")
    container = _container(resources)
    settings = _settings(resources, tmp_path, monkeypatch)
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    (data,) = statefulset["spec"]["volumeClaimTemplates"]
    on_data = PurePosixPath(mounts[data["metadata"]["name"]]["mountPath"])
    assert not mounts[data["metadata"]["name"]].get("readOnly")
    for setting in (settings.alerts.spool_dir, settings.scoring.state_dir):
        assert PurePosixPath(setting).is_relative_to(on_data), setting
    # The Dockerfile's home folder and working directory: relative paths land there too.
    assert re.search(rf"^WORKDIR {on_data}$", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    models = next(
        m
        for m in mounts.values()
        if PurePosixPath(settings.model.path).is_relative_to(m["mountPath"])
    )
    assert models["readOnly"] is True
    # A read-only root file system: /tmp is an emptyDir.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    tmp = next(m for m in mounts.values() if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in _pod(resources)["volumes"] if v["name"] == tmp["name"])
    # The spool's bound (one sink: its spool and its dead letters with their one backup) fits.
    need = (settings.alerts.spool_max_mb + 2 * settings.alerts.dead_letter_max_mb) * 2**20
    assert _quantity(data["spec"]["resources"]["requests"]["storage"]) > need


def test_the_pod_runs_the_image_as_built():
    resources = RENDERED["cpu"]
    container = _container(resources)
    pod = _pod(resources)
    assert "command" not in container, "the image's ENTRYPOINT (vaeguard run) is kept"
    assert _dockerfile_instruction("ENTRYPOINT") == ["vaeguard", "run"]
    assert container["args"] == _dockerfile_instruction("CMD")
    uid = re.search(r"useradd [^\n]*--uid (\d+)", DOCKERFILE.read_text(encoding="utf-8"))
    assert uid and pod["securityContext"]["runAsUser"] == int(uid.group(1))
    assert pod["securityContext"]["fsGroup"] == int(uid.group(1))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert _one(resources, "StatefulSet")["spec"]["template"]["spec"]["enableServiceLinks"] is False


@pytest.mark.parametrize("variant", VARIANTS)
def test_resources_are_requested_within_their_limits(variant):
    resources = _container(RENDERED[variant])["resources"]
    for name in ("cpu", "memory"):
        assert _quantity(resources["requests"][name]) <= _quantity(resources["limits"][name])


# -- the GPU overlay -------------------------------------------------------------------------------


def test_the_gpu_overlay_asks_for_a_gpu_and_keeps_the_rest():
    cpu, gpu = RENDERED["cpu"], RENDERED["gpu"]
    container, pod = _container(gpu), _pod(gpu)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in _container(cpu)["resources"]["limits"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    env = {var["name"]: var for var in container["env"]}
    assert env["VAEGUARD_MODEL__DEVICE"] == {"name": "VAEGUARD_MODEL__DEVICE", "value": "gpu:0"}
    # The patch merged into the base: every base variable, mount and probe is still there.
    for var in _container(cpu)["env"]:
        assert env[var["name"]] == var
    for key in ("volumeMounts", "ports", "startupProbe", "livenessProbe", "readinessProbe"):
        assert container[key] == _container(cpu)[key]
    assert pod["volumes"] == _pod(cpu)["volumes"]
    # The same image name, the GPU build's tag.
    base_image, gpu_image = _container(cpu)["image"], container["image"]
    assert gpu_image.rpartition(":")[0] == base_image.rpartition(":")[0]
    assert gpu_image.endswith("-gpu") and not base_image.endswith("-gpu")
    others = lambda rs: [r for r in rs if r["kind"] != "StatefulSet"]  # noqa: E731
    assert others(gpu) == others(cpu)


def test_the_image_tags_are_this_release():
    assert _container(RENDERED["cpu"])["image"].endswith(f":{__version__}")
    assert _container(RENDERED["gpu"])["image"].endswith(f":{__version__}-gpu")


def test_merge_patches_named_lists_by_name_and_replaces_others():
    base = {"a": [{"name": "x", "v": 1}, {"name": "y", "v": 2}], "b": [1, 2], "c": {"d": 1}}
    patch = {"a": [{"name": "y", "w": 3}, {"name": "z"}], "b": [3], "c": {"e": 2}}
    assert _merge(base, patch) == {
        "a": [{"name": "x", "v": 1}, {"name": "y", "v": 2, "w": 3}, {"name": "z"}],
        "b": [3],
        "c": {"d": 1, "e": 2},
    }


# -- kustomize itself, where installed -------------------------------------------------------------


def _canonical(data: Any) -> Any:
    """Order-free: maps as they are, lists of named items sorted by name; a generated name's
    hash suffix dropped."""
    if isinstance(data, dict):
        return {k: _canonical(v) for k, v in data.items()}
    if isinstance(data, list):
        items = [_canonical(i) for i in data]
        if all(isinstance(i, dict) and "name" in i for i in items):
            items.sort(key=lambda i: str(i["name"]))
        return items
    if isinstance(data, str):
        return re.sub(r"^(vaeguard-config)-[a-z0-9]{10}$", r"\1", data)
    return data


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("variant", VARIANTS)
def test_kubectl_kustomize_renders_the_same(variant):
    out = subprocess.run(
        ["kubectl", "kustomize", str(VARIANTS[variant])],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    theirs = sorted(
        (_canonical(d) for d in yaml.safe_load_all(out) if d),
        key=lambda r: (r["kind"], r["metadata"]["name"]),
    )
    ours = sorted(
        (_canonical(r) for r in RENDERED[variant]), key=lambda r: (r["kind"], r["metadata"]["name"])
    )
    assert theirs == ours
