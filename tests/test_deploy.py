"""Deployment artefacts, checked as an operator's tools would see them, without a cluster or a
Docker daemon:

* every Kustomize overlay (and each optional component) renders with ``kubectl kustomize``, and
  the rendered objects validate against the Kubernetes schemas (``kubernetes-validate``,
  strict); the KEDA and Prometheus-operator objects against their documented fields;
* what the objects promise holds together: probes, resources and a hardened securityContext on
  every container, Secrets referenced and never rendered, a policies ConfigMap holding every
  policy file, a volume for each worker's spool, every ``MODERATION_*`` name a Settings field
  and the whole environment a valid production Settings;
* the alerting rules pass ``promtool check rules`` and their unit tests, the dashboard's
  queries parse, and the compose file references only images, files and settings that exist.

That every metric named in the alerts and the dashboard is really exported is checked against
live processes in ``tests/test_observability.py``.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from moderation.adapters.celery_queue import consumed_queues
from moderation.settings import QueueSettings, Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
RULES = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "moderation.json"
PROMTOOL = shutil.which("promtool")
KUBECTL = shutil.which("kubectl")
#: The Kubernetes version the manifests are validated against (kubectl's own minor).
KUBERNETES_VERSION = "1.32.0"
# a tag (never latest) or a digest
PINNED_IMAGE = r"[\w./-]+(:[\w.-]+|@sha256:[0-9a-f]{64})"
#: Keys of the Secret moderation-secrets (created by the operator; README: Kubernetes).
SECRET_KEYS = {
    "REDIS_PASSWORD",
    "MODERATION_QUEUE__CALLBACK_SECRET",
    "MODERATION_S3__ACCESS_KEY_ID",
    "MODERATION_S3__SECRET_ACCESS_KEY",
    "MODERATION_API_KEYS",
    "MODERATION_REVIEW__SESSION_SECRET",
    "MODERATION_REVIEW__PSEUDONYM_SECRET",
}
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}
#: CloudNativePG's resources (component postgres-cnpg only)
CNPG_KINDS = {"Cluster", "ScheduledBackup"}

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="needs promtool (scripts/ensure-test-deps.sh installs prometheus)"
)


def _kustomize_major() -> int:
    if KUBECTL is None:
        return 0
    out = subprocess.run(
        [KUBECTL, "version", "--client"], capture_output=True, text=True, timeout=60
    ).stdout
    found = re.search(r"Kustomize Version: v(\d+)", out)
    return int(found[1]) if found else 0


needs_kustomize = pytest.mark.skipif(
    _kustomize_major() < 5,
    reason="needs kubectl with kustomize v5 (scripts/ensure-test-deps.sh installs kubectl)",
)


# --- rendering -----------------------------------------------------------------------------------


def kustomize(path: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [str(KUBECTL), "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _variant(tmp: Path, overlay: str, components: list[str]) -> Path:
    """An overlay with optional components added, as an operator's own kustomization would."""
    folder = tmp / f"{overlay}+{'+'.join(c.split('/')[-1] for c in components)}"
    folder.mkdir()
    (folder / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize takes no absolute roots: paths relative to this folder
                "resources": [os.path.relpath(K8S / "overlays" / overlay, folder)],
                "components": [os.path.relpath(K8S / c, folder) for c in components],
            }
        )
    )
    return folder


def _inside(tmp: Path, overlay: str, components: list[str]) -> Path:
    """The overlay with components listed in it, as an operator adds a component that brings
    workloads of its own (the overlay's namespace, images and ConfigMap names reach them)."""
    import shutil

    source = K8S / "overlays" / overlay
    folder = tmp / f"{overlay}+in+{'+'.join(c.split('/')[-1] for c in components)}"
    shutil.copytree(source, folder)
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())

    def moved(path: str) -> str:
        return os.path.relpath(source / path, folder) if path.startswith("..") else path

    kustomization["resources"] = [moved(r) for r in kustomization.get("resources", [])]
    kustomization["components"] = [
        *(moved(c) for c in kustomization.get("components", [])),
        *(os.path.relpath(K8S / c, folder) for c in components),
    ]
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return folder


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    if _kustomize_major() < 5:
        pytest.skip("needs kubectl with kustomize v5")
    tmp = tmp_path_factory.mktemp("kustomize")
    out = {name: kustomize(K8S / "overlays" / name) for name in ("dev-cpu", "prod-gpu")}
    every_option = ["components/scale-to-zero", "components/weights-volume"]
    out["prod-gpu+options"] = kustomize(_variant(tmp, "prod-gpu", every_option))
    out["dev-cpu+weights-volume"] = kustomize(
        _variant(tmp, "dev-cpu", ["components/weights-volume"])
    )
    out["example-site"] = kustomize(K8S / "overlays" / "example-site")
    out["prod-gpu+postgres-cnpg"] = kustomize(
        _variant(tmp, "prod-gpu", ["components/postgres-cnpg"])
    )
    out["prod-gpu+gpu-feature-discovery"] = kustomize(
        _variant(tmp, "prod-gpu", ["components/gpu-feature-discovery"])
    )
    out["prod-gpu+exchange-sync+postgres-cnpg"] = kustomize(
        _inside(tmp, "prod-gpu", ["components/exchange-sync", "components/postgres-cnpg"])
    )
    out["dev-cpu+exchange-sync"] = kustomize(_inside(tmp, "dev-cpu", ["components/exchange-sync"]))
    out["prod-gpu+postgres-cnpg+policy-store"] = kustomize(
        _variant(tmp, "prod-gpu", ["components/postgres-cnpg", "components/policy-store"])
    )
    return out


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def named_prefix(docs: list[dict[str, Any]], kind: str, prefix: str) -> dict[str, Any]:
    """A generated object (its name has a hash suffix)."""
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(prefix)]
    assert len(found) == 1, f"{kind}/{prefix}*: {len(found)} found"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The environment a container gets from its ConfigMaps and literal ``env`` (Secret values
    replaced by strong stand-ins, as the operator's Secret would hold)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        if "secretRef" in source:
            env.update({key: _stand_in(key) for key in SECRET_KEYS})
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], entry["value"])
        else:
            env[entry["name"]] = _stand_in(entry["valueFrom"]["secretKeyRef"]["key"])
    return env


def _stand_in(key: str) -> str:
    if key == "MODERATION_API_KEYS":
        return json.dumps([{"tenant": "acme", "key": "k" * 16 + "0123456789abcdef" * 2}])
    if key == "MODERATION_S3__ACCESS_KEY_ID":
        return "AKIA0123456789ABCDEF"
    return "0123456789abcdef" * 4


# --- the manifests -------------------------------------------------------------------------------


@needs_kustomize
def test_every_overlay_renders_and_validates_against_the_kubernetes_schemas(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    import kubernetes_validate

    for name, docs in rendered.items():
        kinds = {d["kind"] for d in docs}
        assert {"StatefulSet", "Service", "PodDisruptionBudget", "NetworkPolicy"} <= kinds, name
        assert kinds & CUSTOM_KINDS == CUSTOM_KINDS, name
        for doc in docs:
            if doc["kind"] in CUSTOM_KINDS | CNPG_KINDS:
                continue  # custom resources: their own schemas below
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    # The validator is strict: a misspelt field is an error, not ignored.
    api = copy.deepcopy(one(rendered["prod-gpu"], "StatefulSet", "moderation-api"))
    api["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(api, KUBERNETES_VERSION, strict=True)


# Schemas of the custom resources, written from their documentation (KEDA: "ScaledObject
# specification", "Authentication", "Redis Lists" scaler; Prometheus operator: API reference
# of ServiceMonitor and PrometheusRule): only documented fields, with their types.
_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": _NAME, "namespace": _NAME, "labels": _STRINGS, "annotations": _STRINGS},
    "additionalProperties": False,
}


def _resource(kind: str, api_version: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
        "additionalProperties": False,
    }


def _closed(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required or [],
        "additionalProperties": False,
    }


_INT = {"type": "integer", "minimum": 0}
_HPA_RULES = _closed(
    {
        "stabilizationWindowSeconds": _INT,
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {
            "type": "array",
            "items": _closed(
                {"type": {"enum": ["Pods", "Percent"]}, "value": _INT, "periodSeconds": _INT},
                ["type", "value", "periodSeconds"],
            ),
        },
    }
)
#: Redis Lists scaler: trigger metadata (every value a string) and authentication parameters.
REDIS_TRIGGER_METADATA = {
    "address",
    "addressFromEnv",
    "host",
    "hostFromEnv",
    "port",
    "portFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "listName",
    "listLength",
    "activationListLength",
    "databaseIndex",
    "enableTLS",
    "unsafeSsl",
}
REDIS_AUTH_PARAMETERS = {"address", "host", "port", "username", "password", "tls", "ca", "cert"}
SCALED_OBJECT = _resource(
    "ScaledObject",
    "keda.sh/v1alpha1",
    _closed(
        {
            "scaleTargetRef": _closed(
                {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "name": _NAME,
                    "envSourceContainerName": {"type": "string"},
                },
                ["name"],
            ),
            "pollingInterval": _INT,
            "cooldownPeriod": _INT,
            "initialCooldownPeriod": _INT,
            "idleReplicaCount": _INT,
            "minReplicaCount": _INT,
            "maxReplicaCount": _INT,
            "fallback": _closed(
                {"failureThreshold": _INT, "replicas": _INT, "behavior": {"type": "string"}}
            ),
            "advanced": _closed(
                {
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "scalingModifiers": _closed(
                        {
                            "formula": {"type": "string"},
                            "target": {"type": "string"},
                            "activationTarget": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value"]},
                        },
                        ["formula", "target"],
                    ),
                    "horizontalPodAutoscalerConfig": _closed(
                        {
                            "name": {"type": "string"},
                            "behavior": _closed({"scaleUp": _HPA_RULES, "scaleDown": _HPA_RULES}),
                        }
                    ),
                }
            ),
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": _closed(
                    {
                        "type": {"type": "string"},
                        "name": {"type": "string"},
                        "metadata": {
                            "type": "object",
                            "propertyNames": {"enum": sorted(REDIS_TRIGGER_METADATA)},
                            "additionalProperties": {"type": "string"},
                            "required": ["listName"],
                        },
                        "authenticationRef": _closed(
                            {
                                "name": _NAME,
                                "kind": {
                                    "enum": [
                                        "TriggerAuthentication",
                                        "ClusterTriggerAuthentication",
                                    ]
                                },
                            },
                            ["name"],
                        ),
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "useCachedMetrics": {"type": "boolean"},
                    },
                    ["type", "metadata"],
                ),
            },
        },
        ["scaleTargetRef", "triggers"],
    ),
)
TRIGGER_AUTHENTICATION = _resource(
    "TriggerAuthentication",
    "keda.sh/v1alpha1",
    _closed(
        {
            "secretTargetRef": {
                "type": "array",
                "items": _closed(
                    {
                        "parameter": {"enum": sorted(REDIS_AUTH_PARAMETERS)},
                        "name": _NAME,
                        "key": {"type": "string"},
                    },
                    ["parameter", "name", "key"],
                ),
            },
        }
    ),
)
_ENDPOINT = _closed(
    {
        "port": {"type": "string"},
        "targetPort": {"type": ["string", "integer"]},
        "path": {"type": "string", "pattern": "^/"},
        "scheme": {"enum": ["http", "https"]},
        "interval": {"type": "string", "pattern": r"^\d+[smh]$"},
        "scrapeTimeout": {"type": "string", "pattern": r"^\d+[smh]$"},
        "honorLabels": {"type": "boolean"},
        "relabelings": {"type": "array"},
        "metricRelabelings": {"type": "array"},
    },
    ["port"],
)
SERVICE_MONITOR = _resource(
    "ServiceMonitor",
    "monitoring.coreos.com/v1",
    _closed(
        {
            "jobLabel": {"type": "string"},
            "targetLabels": {"type": "array", "items": {"type": "string"}},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "selector": _closed({"matchLabels": _STRINGS, "matchExpressions": {"type": "array"}}),
            "namespaceSelector": _closed(
                {"any": {"type": "boolean"}, "matchNames": {"type": "array"}}
            ),
            "endpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
        },
        ["selector", "endpoints"],
    ),
)
_DURATION = {"type": "string", "pattern": r"^(\d+(ms|s|m|h|d|w|y))+$"}
PROMETHEUS_RULE = _resource(
    "PrometheusRule",
    "monitoring.coreos.com/v1",
    _closed(
        {
            "groups": {
                "type": "array",
                "minItems": 1,
                "items": _closed(
                    {
                        "name": {"type": "string"},
                        "interval": _DURATION,
                        "rules": {
                            "type": "array",
                            "items": _closed(
                                {
                                    "alert": {"type": "string"},
                                    "record": {"type": "string"},
                                    "expr": {"type": "string"},
                                    "for": _DURATION,
                                    "keep_firing_for": _DURATION,
                                    "labels": _STRINGS,
                                    "annotations": _STRINGS,
                                },
                                ["expr"],
                            ),
                        },
                    },
                    ["name", "rules"],
                ),
            }
        },
        ["groups"],
    ),
)
SCHEMAS = {
    "ScaledObject": SCALED_OBJECT,
    "TriggerAuthentication": TRIGGER_AUTHENTICATION,
    "ServiceMonitor": SERVICE_MONITOR,
    "PrometheusRule": PROMETHEUS_RULE,
}


@needs_kustomize
def test_keda_objects_scale_the_workers_on_the_celery_queues(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    queue = QueueSettings()
    for (name, docs), workers in itertools.product(
        rendered.items(), ("moderation-worker", "moderation-worker-video")
    ):
        namespaces = {d["metadata"].get("namespace") for d in docs} - {None}
        assert len(namespaces) == 1, name
        namespace = namespaces.pop()
        scaled = one(docs, "ScaledObject", workers)
        jsonschema.validate(scaled, SCHEMAS["ScaledObject"])
        spec = scaled["spec"]
        target = spec["scaleTargetRef"]
        one(docs, target["kind"], target["name"])  # scales what exists: the worker StatefulSet
        assert target["kind"] == "StatefulSet" and target["name"] == workers
        assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
        # one trigger per lane the workers consume (the settings the pods get: photo lanes
        # and backtests, or video lanes), summed; never the callbacks queue (the API delivers
        # callbacks: no GPU worker needed) (the lanes of the tenants the manifests declare; a
        # site declares each tenant whose API key it puts in the Secret: docs/deployment.md,
        # autoscaling)
        worker_env = env_of(docs, _worker_container(docs, workers))
        declared = {k: v for k, v in worker_env.items() if k not in SECRET_KEYS}
        settings = Settings(**_settings_kwargs(declared))
        consumed = set(consumed_queues(settings)) - {settings.queue.callback_queue_name}
        lists = {t["metadata"]["listName"] for t in spec["triggers"]}
        assert lists == consumed, (name, workers)
        expected = "videos" if workers.endswith("-video") else "photos"
        assert settings.queue.worker_lanes == expected, (name, workers)
        assert queue.callback_queue_name not in lists
        assert settings.queue.callback_senders == "api", name
        formula = spec["advanced"]["scalingModifiers"]["formula"]
        assert set(re.findall(r"\w+", formula)) == {t["name"] for t in spec["triggers"]}, name
        assert formula.count("+") == len(spec["triggers"]) - 1, name  # the lanes are summed
        for trigger in spec["triggers"]:
            assert trigger["type"] == "redis"
            assert int(trigger["metadata"]["listLength"]) > 0
            # KEDA's operator resolves the address from its own namespace.
            host = trigger["metadata"]["address"].split(":")[0]
            assert host == f"moderation-valkey.{namespace}.svc.cluster.local"
            one(docs, "Service", host.split(".")[0])
            auth = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
            jsonschema.validate(auth, SCHEMAS["TriggerAuthentication"])
            for ref in auth["spec"]["secretTargetRef"]:
                assert ref["name"] == "moderation-secrets" and ref["key"] in SECRET_KEYS
        zero = spec["minReplicaCount"] == 0
        assert zero == ("options" in name), name  # scale to zero only with its component
    # The schema is closed: an undocumented field is caught.
    bad = copy.deepcopy(one(rendered["prod-gpu"], "ScaledObject", "moderation-worker"))
    bad["spec"]["triggers"][0]["metadata"]["listLenght"] = "8"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMAS["ScaledObject"])


@needs_kustomize
def test_service_monitors_scrape_the_api_and_every_worker_and_the_rules_are_the_alerts(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for docs in rendered.values():
        monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
        assert {m["metadata"]["name"] for m in monitors} == {"moderation-api", "moderation-worker"}
        for monitor in monitors:
            jsonschema.validate(monitor, SCHEMAS["ServiceMonitor"])
            wanted = monitor["spec"]["selector"]["matchLabels"]
            services = [
                d
                for d in docs
                if d["kind"] == "Service"
                and wanted.items() <= d["metadata"].get("labels", {}).items()
            ]
            assert len(services) == 1, monitor["metadata"]["name"]
            service = services[0]
            for endpoint in monitor["spec"]["endpoints"]:
                port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
                # ...and the Service's target port is a container port of the selected pods.
                pods = [
                    spec
                    for _, spec in pod_specs(docs)
                    if service["spec"]["selector"].items() <= _pod_labels(docs, spec).items()
                ]
                assert pods, service["metadata"]["name"]
                ports = {
                    p["name"]: p["containerPort"]
                    for c in pods[0]["containers"]
                    for p in c.get("ports", [])
                }
                assert port["targetPort"] in ports
        worker = one(docs, "StatefulSet", "moderation-worker")["spec"]["template"]["spec"]
        container = worker["containers"][0]
        env = env_of(docs, container)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == int(env["MODERATION_QUEUE__WORKER_METRICS_PORT"])
        assert ports["health"] == int(env["MODERATION_QUEUE__WORKER_HEALTH_PORT"])
        assert one(docs, "Service", "moderation-worker")["spec"]["clusterIP"] == "None"
        rule = one(docs, "PrometheusRule", "moderation")
        jsonschema.validate(rule, SCHEMAS["PrometheusRule"])
        assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    generator = _load_script("prometheusrule")
    assert generator.TARGET.read_text() == generator.render(), "run `make manifests`"


@needs_kustomize
def test_the_api_operations_port_is_probed_and_scraped_and_never_public(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for docs in rendered.values():
        api = one(docs, "StatefulSet", "moderation-api")["spec"]["template"]["spec"]
        container = api["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        args = container["args"]
        assert ports["ops"] == int(args[args.index("--ops-port") + 1]) != ports["http"]
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["port"] == "ops", probe
        public = one(docs, "Service", "moderation-api")["spec"]["ports"]
        assert [p["targetPort"] for p in public] == ["http"]  # what an Ingress can route
        ops = one(docs, "Service", "moderation-api-ops")["spec"]
        assert ops["clusterIP"] == "None" and [p["targetPort"] for p in ops["ports"]] == ["ops"]
        monitor = one(docs, "ServiceMonitor", "moderation-api")
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["ops"]
        for ingress in (d for d in docs if d["kind"] == "Ingress"):
            backends = [
                path["backend"]["service"]
                for rule in ingress["spec"]["rules"]
                for path in rule["http"]["paths"]
            ]
            assert backends and all(
                b == {"name": "moderation-api", "port": {"name": "http"}} for b in backends
            ), backends
    services = _compose("compose.yaml")["services"]
    command = services["api"]["command"]
    ops_port = command[command.index("--ops-port") + 1]
    assert f"127.0.0.1:{ops_port}/readyz" in services["api"]["healthcheck"]["test"][-1]
    assert not any(p.endswith(f":{ops_port}") for p in services["api"]["ports"])


@needs_kustomize
def test_keda_owns_the_worker_count_and_no_manifest_sets_it(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in rendered.items():
        targets = {d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] == "ScaledObject"}
        assert targets == {"moderation-worker", "moderation-worker-video"}, name
        for target in targets:
            assert "replicas" not in one(docs, "StatefulSet", target)["spec"], name


@needs_kustomize
@needs_kustomize
def test_the_audit_drain_template_mounts_a_spool_claim_and_flushes_it_to_s3(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in rendered.items():
        cron = one(docs, "CronJob", "moderation-audit-drain")
        assert cron["spec"]["suspend"] is True, name  # a template: never scheduled
        job = cron["spec"]["jobTemplate"]["spec"]
        spec = job["template"]["spec"]
        (container,) = spec["containers"]
        assert container["args"][:3] == ["moderation", "audit", "flush"], name
        env = env_of(docs, container)
        claim = next(v for v in spec["volumes"] if "persistentVolumeClaim" in v)
        assert re.fullmatch(
            r"state-moderation-(api|worker)-\d+", claim["persistentVolumeClaim"]["claimName"]
        )
        # the claim is mounted where the spool of the pod that left it was
        worker = _worker_container(docs)
        state = next(m for m in worker["volumeMounts"] if m["name"] == "state")["mountPath"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == claim["name"])
        assert mount["mountPath"] == state, name
        assert env["MODERATION_AUDIT__SPOOL_DIR"].startswith(state + "/"), name
        # the workers' identity (it may write the audit bucket), hardened, no GPU
        assert spec["serviceAccountName"] == "moderation-worker", name
        one(docs, "ServiceAccount", "moderation-worker")
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        assert "nvidia.com/gpu" not in container["resources"].get("limits", {}), name
        assert re.fullmatch(PINNED_IMAGE, container["image"]), name
        registry = container["image"].split("/")[0]
        assert "/" in container["image"] and ("." in registry or ":" in registry), name
        if name == "example-site":  # the site's digest, as for every other pod
            assert re.fullmatch(r"[^@]+/moderation@sha256:[0-9a-f]{64}", container["image"])
        # its pods may reach S3 (the egress policy selects them), nothing may reach them
        labels = job["template"]["metadata"]["labels"]
        egress = one(docs, "NetworkPolicy", "moderation-app-egress")["spec"]["podSelector"]
        assert _selects(egress, labels), name
        assert job["backoffLimit"] > 0, name  # S3 still down: retried, the Job fails visibly


@needs_kustomize
def test_api_and_worker_pods_share_one_blob_bucket(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    shipped = env_of(rendered["prod-gpu"], _worker_container(rendered["prod-gpu"]))
    for name, docs in rendered.items():
        api = one(docs, "StatefulSet", "moderation-api")["spec"]["template"]["spec"]
        api_env = env_of(docs, api["containers"][0])
        worker_env = env_of(docs, _worker_container(docs))
        # review evidence, filmstrips, spilled inline images and exemplars written by one pod
        # are read by another: never each pod's own folder
        assert api_env["MODERATION_BLOBS__BUCKET"], name
        assert api_env["MODERATION_BLOBS__BUCKET"] == worker_env["MODERATION_BLOBS__BUCKET"], name
        assert api_env["MODERATION_BLOBS__BUCKET"] != api_env["MODERATION_AUDIT__BUCKET"], name
        if name == "example-site":  # bucket names are global: the site names its own
            assert worker_env["MODERATION_BLOBS__BUCKET"] != shipped["MODERATION_BLOBS__BUCKET"]


def test_a_process_with_a_database_and_no_blob_bucket_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from moderation.compose.database import warn_local_blobs
    from moderation.settings import BlobSettings, DatabaseSettings

    local = Settings(database=DatabaseSettings(url="postgresql://db/moderation"))  # type: ignore[arg-type]
    with caplog.at_level("WARNING"):
        assert warn_local_blobs(local, process="worker") is True
    assert "MODERATION_BLOBS__BUCKET" in caplog.text
    shared = local.model_copy(update={"blobs": BlobSettings(bucket="moderation-blobs")})
    assert warn_local_blobs(shared, process="worker") is False
    assert warn_local_blobs(Settings(), process="demo") is False  # one process: its own folder


@needs_kustomize
def test_the_policy_store_component_selects_the_database_and_the_configmap_route_stays(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in rendered.items():
        api = one(docs, "StatefulSet", "moderation-api")["spec"]["template"]["spec"]
        env = env_of(docs, api["containers"][0])
        worker = _worker_container(docs)
        if name.endswith("+policy-store"):
            assert env["MODERATION_POLICY_SOURCE"] == "database", name
            assert "MODERATION_DATABASE__URL" in {e["name"] for e in worker.get("env", [])}, name
        else:  # GitOps: the ConfigMap, mounted where the settings look
            assert env.get("MODERATION_POLICY_SOURCE", "files") == "files", name


@needs_kustomize
def test_every_pod_runs_as_its_own_service_account_without_an_api_token(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in rendered.items():
        accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
        used: dict[str, set[str]] = {}
        for workload, spec in pod_specs(docs):
            account = spec.get("serviceAccountName")
            assert account in accounts, (name, workload, account)
            assert spec["automountServiceAccountToken"] is False, (name, workload)
            component = _pod_labels(docs, spec)["app.kubernetes.io/component"]
            used.setdefault(component, set()).add(account)
        # one per component (the photo and the video workers are both `worker`: one identity)
        assert all(len(a) == 1 for a in used.values()), name
        assert len(set().union(*used.values())) == len(used), name
        assert all(a["automountServiceAccountToken"] is False for a in accounts.values())


@needs_kustomize
def test_gpu_workers_need_only_the_device_plugin_and_gfd_is_an_option(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name in ("prod-gpu", "example-site", "prod-gpu+options"):
        worker = one(rendered[name], "StatefulSet", "moderation-worker")["spec"]["template"]
        assert "nodeSelector" not in worker["spec"], name
        limits = worker["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == 1, name
    gfd = one(rendered["prod-gpu+gpu-feature-discovery"], "StatefulSet", "moderation-worker")
    assert gfd["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


@needs_kustomize
def test_images_name_a_registry_and_the_site_overlay_pins_a_digest(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in rendered.items():
        for _workload, spec in pod_specs(docs):
            for container in containers(spec):
                image = container["image"]
                registry = image.split("/")[0]
                # "moderation:tag" alone resolves to docker.io/library/moderation
                assert "/" in image and ("." in registry or ":" in registry), (name, image)
    for _workload, spec in pod_specs(rendered["example-site"]):
        for container in containers(spec):
            if "valkey" not in container["image"]:
                assert re.fullmatch(r"[^@]+/moderation@sha256:[0-9a-f]{64}", container["image"])


@needs_kustomize
def test_the_example_site_sets_buckets_region_weights_hash_identity_and_tls(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["example-site"]
    shipped = env_of(rendered["prod-gpu"], _worker_container(rendered["prod-gpu"]))
    env = env_of(docs, _worker_container(docs))
    assert env["MODERATION_S3__REGION"] != "us-east-1"
    assert env["MODERATION_AUDIT__BUCKET"] != shipped["MODERATION_AUDIT__BUCKET"]
    assert env["MODERATION_MODEL__CHECKPOINT_SOURCE"].startswith("s3://")
    assert (
        env["MODERATION_MODEL__CHECKPOINT_SOURCE"] != shipped["MODERATION_MODEL__CHECKPOINT_SOURCE"]
    )
    # the fetch-weights step refuses to run without the hash: the site sets it
    init = [
        c["name"]
        for c in one(docs, "StatefulSet", "moderation-worker")["spec"]["template"]["spec"][
            "initContainers"
        ]
    ]
    assert "fetch-weights" in init and re.fullmatch(
        r"[0-9a-f]{64}", env["MODERATION_MODEL__CHECKPOINT_SHA256"]
    )
    for account in ("moderation-api", "moderation-worker"):
        annotations = one(docs, "ServiceAccount", account)["metadata"]["annotations"]
        assert annotations["eks.amazonaws.com/role-arn"].endswith(f":role/{account}")
    assert "annotations" not in one(docs, "ServiceAccount", "moderation-valkey")["metadata"]
    ingress = one(docs, "Ingress", "moderation-api")
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"]
    assert ingress["spec"]["tls"][0]["hosts"] == [ingress["spec"]["rules"][0]["host"]]


@needs_kustomize
def test_the_weights_volume_is_a_claim_that_ebs_and_pd_alternatives_can_provision(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    claim = one(rendered["prod-gpu+options"], "PersistentVolumeClaim", "moderation-weights")
    # ReadOnlyMany on an empty claim is provisioned by neither EBS nor PD
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


@needs_kustomize
def test_no_overlay_crash_loops_on_weights_it_was_not_given(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in rendered.items():
        spec = one(docs, "StatefulSet", "moderation-worker")["spec"]["template"]["spec"]
        init = {c["name"]: c for c in spec.get("initContainers", [])}
        env = env_of(docs, _worker_container(docs))
        # both init steps finish (saying why) when weights are not configured yet: the worker
        # then stays alive and not ready instead of the pod crash-looping
        if "fetch-weights" in init:
            assert "--if-configured" in init["fetch-weights"]["args"], name
        assert "--skip-without-model" in init["compile-policies"]["args"], name
        weights = next(v for v in spec["volumes"] if v["name"] == "weights")
        if "persistentVolumeClaim" in weights:  # the prepared-volume route (EFS / Filestore)
            claim = one(
                docs, "PersistentVolumeClaim", weights["persistentVolumeClaim"]["claimName"]
            )
            assert claim["spec"]["accessModes"] == ["ReadWriteMany"], name
            assert weights["persistentVolumeClaim"]["readOnly"] is True, name
        else:  # the default route: copied from S3 into the pod's own volume, both clouds
            assert "emptyDir" in weights, name
            assert env.get("MODERATION_MODEL__CHECKPOINT", "").startswith("/weights/"), name
        no_claim = [
            d
            for d in docs
            if d["kind"] == "PersistentVolumeClaim" and "ReadOnlyMany" in d["spec"]["accessModes"]
        ]
        assert no_claim == [], name  # EBS and PD provision no ReadOnlyMany claim


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


@needs_kustomize
def test_network_policies_deny_by_default_and_admit_only_the_flows_the_system_needs(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in rendered.items():
        policies = [d["spec"] for d in docs if d["kind"] == "NetworkPolicy"]
        deny = [
            p
            for p in policies
            if p["podSelector"] == {}
            and set(p["policyTypes"]) == {"Ingress", "Egress"}
            and not p.get("ingress")
            and not p.get("egress")
        ]
        assert deny, f"{name}: no default-deny NetworkPolicy"
        pods = {
            d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
            for d in docs
            if d["kind"] in {"Deployment", "StatefulSet"}
        }

        def admitted(
            labels: dict[str, str], port: int, policies: list[dict[str, Any]] = policies
        ) -> list[dict[str, Any]]:
            return [
                peer
                for p in policies
                if _selects(p["podSelector"], labels)
                for rule in p.get("ingress", [])
                if any(x["port"] == port for x in rule.get("ports", []))
                for peer in rule["from"]
            ]

        valkey = admitted(pods["moderation-valkey"], 6379)
        components = {
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for peer in valkey
            if "podSelector" in peer
        }
        assert components == {"api", "worker"}, name  # nothing else in the namespace
        assert [p["namespaceSelector"] for p in valkey if "namespaceSelector" in p] == [
            {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}
        ]
        # Prometheus reaches the API's ops port and the workers' metrics; nothing else reaches
        # the workers, and the public port only from the Ingress controller.
        monitoring = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
        assert [p["namespaceSelector"] for p in admitted(pods["moderation-api"], 8001)] == [
            monitoring
        ]
        assert [p["namespaceSelector"] for p in admitted(pods["moderation-worker"], 9100)] == [
            monitoring
        ]
        assert not admitted(pods["moderation-worker"], 8081)
        assert all("podSelector" not in p for p in admitted(pods["moderation-api"], 8000))
        for workload in ("moderation-api", "moderation-worker"):
            egress = [
                (peer, port["port"])
                for p in policies
                if _selects(p["podSelector"], pods[workload])
                for rule in p.get("egress", [])
                for peer in rule["to"]
                for port in rule["ports"]
            ]
            ports = {port for _, port in egress}
            assert {53, 6379, 5432, 443} <= ports, (name, workload, ports)
            for peer, _ in egress:
                if "ipBlock" in peer:
                    assert "169.254.169.254/32" in peer["ipBlock"]["except"]
        assert not any(
            p.get("egress")
            for p in policies
            if _selects(p["podSelector"], pods["moderation-valkey"]) and p["podSelector"]
        ), "valkey calls nobody"


@needs_kustomize
def test_the_ingress_routes_only_the_public_paths(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    ingresses = 0
    for name, docs in rendered.items():
        for ingress in (d for d in docs if d["kind"] == "Ingress"):
            ingresses += 1
            paths = [
                (path["path"], path["pathType"])
                for rule in ingress["spec"]["rules"]
                for path in rule["http"]["paths"]
            ]

            def routed(url: str, paths: list[tuple[str, str]] = paths) -> bool:
                return any(
                    url == p
                    if kind == "Exact"
                    else url == p.rstrip("/") or url.startswith(p.rstrip("/") + "/")
                    for p, kind in paths
                )

            for private in ("/metrics", "/readyz", "/healthz", "/docs", "/redoc", "/"):
                assert not routed(private), (name, private)
            for public in ("/v1/jobs", "/v1/jobs:batch", "/review", "/review/api/next"):
                assert routed(public), (name, public)
    assert ingresses >= 2


@needs_kustomize
def test_the_api_grace_period_outlasts_the_worst_case_s3_retry(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    from moderation.settings import S3Settings

    for name, docs in rendered.items():
        api = one(docs, "StatefulSet", "moderation-api")["spec"]["template"]["spec"]
        env = env_of(docs, api["containers"][0])
        defaults = S3Settings()
        attempts = int(env.get("MODERATION_S3__MAX_ATTEMPTS", defaults.max_attempts))
        connect = float(env.get("MODERATION_S3__CONNECT_TIMEOUT_S", defaults.connect_timeout_s))
        read = float(env.get("MODERATION_S3__READ_TIMEOUT_S", defaults.read_timeout_s))
        pre_stop = api["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
        # the preStop wait runs inside the grace period, before SIGTERM
        assert api["terminationGracePeriodSeconds"] > pre_stop + attempts * (connect + read) + 30, (
            name
        )


_QUANTITY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _bytes(quantity: str) -> int:
    for suffix, factor in _QUANTITY.items():
        if quantity.endswith(suffix):
            return int(quantity.removesuffix(suffix)) * factor
    return int(quantity)


def test_the_api_spreads_waits_for_endpoints_and_sizes_tmp_for_concurrent_uploads(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    from moderation.settings import QueueSettings

    for name, docs in rendered.items():
        api = one(docs, "StatefulSet", "moderation-api")["spec"]["template"]["spec"]
        container = api["containers"][0]
        assert container["lifecycle"]["preStop"]["sleep"]["seconds"] >= 5, name
        labels = {
            "app.kubernetes.io/name": "moderation",
            "app.kubernetes.io/component": "api",
        }
        keys = {c["topologyKey"] for c in api["topologySpreadConstraints"]}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}, name
        for constraint in api["topologySpreadConstraints"]:
            assert _selects(constraint["labelSelector"], labels), name
            assert constraint["whenUnsatisfiable"] == "ScheduleAnyway", name  # small clusters
        env = env_of(docs, container)
        connections = int(env["MODERATION_API_MAX_CONNECTIONS"])
        inline = int(
            env.get("MODERATION_QUEUE__MAX_INLINE_BYTES", QueueSettings().max_inline_bytes)
        )
        (tmp,) = [v for v in api["volumes"] if v["name"] == "tmp"]
        mounted = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounted["tmp"] == "/tmp", name
        # every allowed connection spooling a largest upload at once still fits
        assert _bytes(tmp["emptyDir"]["sizeLimit"]) >= connections * inline + 32 * 2**20, name


@needs_kustomize
def test_the_exchange_sync_component_runs_one_sync_loop_with_the_database_and_https(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in rendered.items():
        found = [d for d in docs if d["metadata"]["name"] == "moderation-exchange-sync"]
        if "+exchange-sync" not in name:
            assert not found, name  # an option: no overlay runs it by default
            continue
        deployment = one(docs, "Deployment", "moderation-exchange-sync")
        assert deployment["spec"]["replicas"] == 1, name
        assert deployment["spec"]["strategy"]["type"] == "Recreate", name
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert container["args"] == ["moderation", "bank", "sync", "--every"], name
        env = env_of(docs, container)
        assert env["MODERATION_AUDIT__SPOOL_DIR"].startswith("/var/lib/moderation/"), name
        assert {m["mountPath"] for m in container["volumeMounts"]} == {
            "/var/lib/moderation",
            "/tmp",
        }
        assert spec["serviceAccountName"] == "moderation-exchange-sync", name
        urls = [e for e in container["env"] if e["name"] == "MODERATION_DATABASE__URL"]
        if "postgres-cnpg" in name:
            assert urls[0]["valueFrom"]["secretKeyRef"] == {
                "name": "moderation-db-app",
                "key": "uri",
            }
            db = one(docs, "NetworkPolicy", "moderation-app-to-db")["spec"]
            assert _selects(db["podSelector"], _pod_labels(docs, spec)), name
        else:
            assert not urls, name  # the external database: moderation-secrets holds the URL
        policies = [
            d["spec"]
            for d in docs
            if d["kind"] == "NetworkPolicy"
            and _selects(d["spec"]["podSelector"], _pod_labels(docs, spec))
        ]
        assert not [rule for p in policies for rule in p.get("ingress", [])], name
        egress = {
            port["port"] for p in policies for rule in p.get("egress", []) for port in rule["ports"]
        }
        assert {53, 5432, 443} <= egress and 6379 not in egress, (name, egress)


@needs_kustomize
def test_postgres_component_runs_a_backed_up_cluster_the_pods_reach_and_only_they(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["prod-gpu+postgres-cnpg"]
    cluster = one(docs, "Cluster", "moderation-db")
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    spec = cluster["spec"]
    assert spec["instances"] >= 2 and spec["storage"]["size"]
    store = spec["backup"]["barmanObjectStore"]
    assert store["destinationPath"].startswith("s3://") and spec["backup"]["retentionPolicy"]
    owner = spec["bootstrap"]["initdb"]["owner"]
    backup = one(docs, "ScheduledBackup", "moderation-db-daily")["spec"]
    assert backup["cluster"]["name"] == "moderation-db"
    assert len(backup["schedule"].split()) == 6  # CloudNativePG's cron has seconds
    for workload in ("moderation-api", "moderation-worker"):
        container = one(docs, "StatefulSet", workload)["spec"]["template"]["spec"]["containers"][0]
        url = next(e for e in container["env"] if e["name"] == "MODERATION_DATABASE__URL")
        # the Secret CloudNativePG writes for the owner: <cluster>-app, key uri
        assert url["valueFrom"]["secretKeyRef"] == {"name": "moderation-db-app", "key": "uri"}
        assert owner and setting_exists("MODERATION_DATABASE__URL")
    policy = one(docs, "NetworkPolicy", "moderation-db")["spec"]
    clients = [
        peer["podSelector"]["matchLabels"]
        for rule in policy["ingress"]
        if {"protocol": "TCP", "port": 5432} in rule["ports"]
        for peer in rule["from"]
    ]
    assert {c.get("app.kubernetes.io/component") for c in clients} == {
        "api",
        "worker",
        "exchange-sync",
        None,
    }
    # without the component, no database objects and no URL in the manifests (external route:
    # MODERATION_DATABASE__URL in the Secret)
    for name in ("prod-gpu", "dev-cpu"):
        assert not [d for d in rendered[name] if d["kind"] in CNPG_KINDS]


def _worker_container(
    docs: list[dict[str, Any]], workers: str = "moderation-worker"
) -> dict[str, Any]:
    spec = one(docs, "StatefulSet", workers)["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == "worker")


def _load_script(name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pod_labels(docs: list[dict[str, Any]], spec: dict[str, Any]) -> dict[str, str]:
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet"} and doc["spec"]["template"]["spec"] is spec:
            labels: dict[str, str] = doc["spec"]["template"]["metadata"]["labels"]
            return labels
    return {}


@needs_kustomize
def test_every_container_has_probes_resources_and_a_hardened_security_context(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in rendered.items():
        for workload, spec in pod_specs(docs):
            pod = spec["securityContext"]
            assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0, workload
            assert spec["automountServiceAccountToken"] is False, workload
            for container in containers(spec):
                where = f"{name}: {workload}/{container['name']}"
                resources = container["resources"]
                assert {"cpu", "memory"} <= resources["requests"].keys(), where
                assert "memory" in resources["limits"], where
                security = container["securityContext"]
                assert security["allowPrivilegeEscalation"] is False, where
                assert security["readOnlyRootFilesystem"] is True, where
                assert security["capabilities"]["drop"] == ["ALL"], where
                image = container["image"]
                assert re.fullmatch(PINNED_IMAGE, image) and not image.endswith(":latest"), where
            if workload == "moderation-exchange-sync":
                continue  # serves nothing to probe: its alerts watch it (see its manifest)
            for container in spec["containers"]:
                where = f"{name}: {workload}/{container['name']}"
                assert "readinessProbe" in container and "livenessProbe" in container, where
        worker = one(docs, "StatefulSet", "moderation-worker")["spec"]["template"]["spec"]
        probes = worker["containers"][0]
        assert probes["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert probes["startupProbe"]["httpGet"]["path"] == "/livez"
        env = env_of(docs, worker["containers"][0])
        grace = worker["terminationGracePeriodSeconds"]
        assert float(env["MODERATION_QUEUE__SHUTDOWN_TIMEOUT_S"]) < grace
        gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for c in containers(worker)]
        if name.startswith(("prod-gpu", "example-site")):
            assert gpus[-1] == 1 and env["MODERATION_MODEL__DEVICE"] == "cuda"
            assert worker["tolerations"][0]["key"] == "nvidia.com/gpu"
        else:
            assert not any(gpus) and env["MODERATION_MODEL__DEVICE"] == "cpu"
        for budget in ("moderation-api", "moderation-worker"):
            pdb = one(docs, "PodDisruptionBudget", budget)["spec"]
            assert ("minAvailable" in pdb) != ("maxUnavailable" in pdb)


@needs_kustomize
def test_secrets_are_referenced_and_never_rendered_or_committed(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in rendered.items():
        assert not [d for d in docs if d["kind"] == "Secret"], name
        text = yaml.safe_dump_all(docs)
        for _, spec in pod_specs(docs):
            for container in containers(spec):
                for source in container.get("envFrom", []):
                    if "secretRef" in source:
                        assert source["secretRef"]["name"] == "moderation-secrets"
                for entry in container.get("env", []):
                    ref = entry.get("valueFrom", {}).get("secretKeyRef")
                    if ref == {"name": "moderation-db-app", "key": "uri"}:
                        assert "postgres-cnpg" in name  # written by CloudNativePG
                    elif ref:
                        assert ref["name"] == "moderation-secrets" and ref["key"] in SECRET_KEYS
                    elif "PASSWORD" in entry["name"] or "SECRET" in entry["name"]:
                        assert entry["value"].startswith("$("), entry  # only a reference
        for config in (d for d in docs if d["kind"] == "ConfigMap"):
            assert not SECRET_KEYS & set(config.get("data", {})), config["metadata"]["name"]
        assert "change-me" not in text and "changeme" not in text
    committed = [p for p in DEPLOY.rglob("*") if p.is_file() and "change-me" in p.read_text()]
    assert committed == []


@needs_kustomize
def test_the_environment_is_a_valid_production_configuration(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """Every MODERATION_* name is a Settings field, and API and worker environments (with the
    Secret's keys filled by strong values) make a production Settings that starts."""
    for name, docs in rendered.items():
        for workload, spec in pod_specs(docs):
            for container in containers(spec):
                env = env_of(docs, container)
                unknown = [k for k in env if k.startswith("MODERATION_") and not setting_exists(k)]
                assert unknown == [], f"{name} {workload}: {unknown}"
                if workload == "moderation-valkey":
                    continue
                settings = Settings(_env_file=None, **_settings_kwargs(env))
                assert settings.environment == "production"
                assert settings.enforce_security() == []
                assert settings.redis_url is not None or container["name"] != "worker"


def setting_exists(variable: str) -> bool:
    """Whether ``MODERATION_A__B`` names a field (path) of :class:`Settings`."""
    parts = variable.removeprefix("MODERATION_").lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if i < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


def _settings_kwargs(env: dict[str, str]) -> dict[str, Any]:
    """Settings keyword arguments from ``MODERATION_*`` variables (as pydantic-settings reads
    them: JSON for complex fields, ``__`` for nesting)."""
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith("MODERATION_"):
            continue
        parts = key.removeprefix("MODERATION_").lower().split("__")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        try:
            parsed: Any = json.loads(value) if value[:1] in "[{" else value
        except json.JSONDecodeError:
            parsed = value
        node[parts[-1]] = parsed
    return out


@needs_kustomize
def test_policies_configmap_holds_every_policy_file_and_is_mounted_where_settings_look(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    files = {p.name: p.read_text() for p in (ROOT / "policies").glob("*.yaml")}
    for docs in rendered.values():
        config = one(docs, "ConfigMap", "moderation-policies")
        assert config["data"] == files
        for workload in ("moderation-api", "moderation-worker"):
            spec = one(docs, "StatefulSet", workload)["spec"]["template"]["spec"]
            volume = next(
                v
                for v in spec["volumes"]
                if v.get("configMap", {}).get("name") == "moderation-policies"
            )
            container = spec["containers"][0]
            mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
            paths = json.loads(env_of(docs, container)["MODERATION_POLICY_PATHS"])
            assert paths == [mount["mountPath"]]


@needs_kustomize
def test_every_worker_keeps_its_spool_and_cache_on_its_own_volume(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in rendered.items():
        worker = one(docs, "StatefulSet", "moderation-worker")
        claims = {t["metadata"]["name"] for t in worker["spec"]["volumeClaimTemplates"]}
        spec = worker["spec"]["template"]["spec"]
        for container in containers(spec):
            env = env_of(docs, container)
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            writable = [p for p, m in mounts.items() if not m.get("readOnly")]

            def on_mount(path: str, mounts: list[str] = writable) -> str | None:
                return next((m for m in mounts if path == m or path.startswith(m + "/")), None)

            if container["name"] == "fetch-weights":
                assert on_mount(str(Path(env["MODERATION_MODEL__CHECKPOINT"]).parent))
                continue
            for setting in ("MODERATION_AUDIT__SPOOL_DIR", "MODERATION_CACHE_DIR", "HF_HOME"):
                mount = on_mount(env[setting])
                assert mount is not None, f"{name}: {setting} is on the read-only root"
                assert mounts[mount]["name"] in claims, f"{name}: {setting} is not persistent"
            assert on_mount(env["PROMETHEUS_MULTIPROC_DIR"]) and on_mount("/tmp")
        names = [c["name"] for c in spec.get("initContainers", [])]
        weights = next(v for v in spec["volumes"] if v["name"] == "weights")
        if "weights-volume" in name or "options" in name:
            assert names == ["compile-policies"]
            assert weights["persistentVolumeClaim"]["claimName"] == "moderation-weights"
            one(docs, "PersistentVolumeClaim", "moderation-weights")
        elif name in ("prod-gpu", "example-site"):
            assert names == ["fetch-weights", "compile-policies"]  # weights first
        api = one(docs, "StatefulSet", "moderation-api")["spec"]["template"]["spec"]
        api_env = env_of(docs, api["containers"][0])
        api_mounts = [m["mountPath"] for m in api["containers"][0]["volumeMounts"]]
        assert any(api_env["MODERATION_AUDIT__SPOOL_DIR"].startswith(m + "/") for m in api_mounts)
        # ... on a claim of its own, which outlives the pod (not an emptyDir)
        api_set = one(docs, "StatefulSet", "moderation-api")["spec"]
        spool = next(
            m
            for m in api["containers"][0]["volumeMounts"]
            if api_env["MODERATION_AUDIT__SPOOL_DIR"].startswith(m["mountPath"] + "/")
        )
        assert spool["name"] in {t["metadata"]["name"] for t in api_set["volumeClaimTemplates"]}
        assert not any(v["name"] == spool["name"] for v in api["volumes"]), name
        assert api_set["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"


@needs_kustomize
def test_valkey_persists_every_second_needs_a_password_and_never_evicts(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for docs in rendered.values():
        config = named_prefix(docs, "ConfigMap", "moderation-valkey")["data"]["valkey.conf"]
        lines = {
            line.split()[0]: line.split()[1:]
            for line in config.splitlines()
            if line.strip() and not line.startswith("#")
        }
        assert lines["appendonly"] == ["yes"] and lines["appendfsync"] == ["everysec"]
        assert lines["maxmemory-policy"] == ["noeviction"] and lines["dir"] == ["/data"]
        valkey = one(docs, "StatefulSet", "moderation-valkey")
        container = valkey["spec"]["template"]["spec"]["containers"][0]
        assert '--requirepass "$REDIS_PASSWORD"' in container["args"][0]
        assert container["env"][0]["valueFrom"]["secretKeyRef"]["key"] == "REDIS_PASSWORD"
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["data"] == "/data"
        assert valkey["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
        for workload in ("moderation-api", "moderation-worker"):
            spec = one(docs, "StatefulSet", workload)["spec"]["template"]["spec"]
            url = env_of(docs, spec["containers"][0])["MODERATION_REDIS_URL"]
            assert re.fullmatch(r"redis://:[0-9a-f]{64}@moderation-valkey:6379/0", url)


def test_policies_kustomization_lists_every_policy_file() -> None:
    listed = yaml.safe_load((ROOT / "policies" / "Kustomization").read_text())
    files = listed["configMapGenerator"][0]["files"]
    assert sorted(files) == sorted(p.name for p in (ROOT / "policies").glob("*.yaml"))


# --- Prometheus rules and the dashboard ----------------------------------------------------------


@needs_promtool
def test_alert_rules_are_valid_and_fire_when_they_should() -> None:
    check = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        [str(PROMTOOL), "test", "rules", "alerts_test.yaml"],
        cwd=ROOT / "tests" / "data",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert test.returncode == 0, test.stdout + test.stderr
    tested = set(
        re.findall(r"alertname: (\w+)", (ROOT / "tests/data/alerts_test.yaml").read_text())
    )
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert alerts == tested  # every alert has a unit test
    required = {
        "ModerationQueueBacklogOld",
        "ModerationJobErrorRate",
        "ModerationDeadLetters",
        "ModerationReviewSlaBreached",
        "ModerationAuditSpoolNotDraining",
        "ModerationNoWorkers",
        "ModerationCallbackFailures",
    }
    assert required <= alerts


def _slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _duration_s(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smhd])", text))


def test_every_alert_links_its_runbook_section_and_uses_the_routed_severities() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", runbook, flags=re.MULTILINE)}
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    for rule in rules:
        url = rule["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page.endswith("/docs/runbook.md"), rule["alert"]
        assert anchor == rule["alert"].lower() and anchor in anchors, rule["alert"]
        # kube-prometheus-stack's Alertmanager routes these three
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
    severities = {r["labels"]["severity"] for r in rules}
    assert severities == {"critical", "warning", "info"}
    by_name = {r["alert"]: r for r in rules}
    # a start from zero (GPU node, image, weights) never pages: a slow one warns first
    slow, none = by_name["ModerationWorkersStartSlow"], by_name["ModerationNoWorkers"]
    assert slow["expr"] == none["expr"]
    assert 0 < _duration_s(slow["for"]) < _duration_s(none["for"])
    assert _duration_s(none["for"]) >= 15 * 60
    # error alerts are rates over a window, never one 5xx
    for name in ("ModerationApiErrors", "ModerationJobErrorRate"):
        assert "rate(" in by_name[name]["expr"] and " / " in by_name[name]["expr"], name
    for needed in (
        "ModerationValkeyDown",
        "ModerationValkeyMemoryHigh",
        "ModerationPostgresDown",
        "ModerationPostgresMemoryHigh",
        "ModerationPostgresConnectionsHigh",
        "ModerationWorkersNotReady",
        "ModerationWorkersAtMaximum",
    ):
        assert needed in by_name


def test_every_alert_has_a_case_that_fires_and_one_that_must_not() -> None:
    cases = yaml.safe_load((ROOT / "tests" / "data" / "alerts_test.yaml").read_text())
    fires: set[str] = set()
    quiet: set[str] = set()
    for test in cases["tests"]:
        for case in test.get("alert_rule_test", []):
            (fires if case["exp_alerts"] else quiet).add(case["alertname"])
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert alerts - fires == set()
    assert alerts - quiet == set()


def test_the_dashboard_filters_every_query_by_a_namespace_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "namespace")
    assert "namespace)" in variable["definition"] and variable["allValue"] == ".*"
    for expr in dashboard_queries():
        selectors = re.findall(r"\bmoderation_[a-z_]+(\{[^}]*\})?", expr)
        assert selectors and all('namespace=~"$namespace"' in sel for sel in selectors), expr


def test_the_runbook_covers_every_alert_and_the_procedures_operators_need() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert {a for a in alerts if a not in runbook} == set()
    for section in (
        "## First deployment",
        "## Upgrades and rollback",
        "## Rotating secrets",
        "## Losing Redis",
        "## Losing the database",
        "## Orphaned audit spools",
        "## Scaling limits",
    ):
        assert section in runbook
    secrets = runbook.split("## Rotating secrets")[1].split("\n## ")[0]
    assert {k for k in SECRET_KEYS if k not in secrets} <= {
        "MODERATION_S3__ACCESS_KEY_ID",
        "MODERATION_S3__SECRET_ACCESS_KEY",
    }  # one row for both: MODERATION_S3__* keys
    assert "MODERATION_S3__*" in secrets and "**never**" in secrets


@needs_promtool
def test_prometheus_config_of_the_local_stack_is_valid() -> None:
    check = subprocess.run(
        [str(PROMTOOL), "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


@needs_promtool
def test_dashboard_queries_parse_and_panels_are_well_formed(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "moderation-pipeline"
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel
    # promtool parses each query as a recording rule ($__rate_interval as Grafana fills it).
    queries = [q.replace("$__rate_interval", "5m") for q in dashboard_queries()]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    check = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert len(queries) >= 20


# --- the image -----------------------------------------------------------------------------------


def test_the_image_builds_from_the_lock_as_a_non_root_user_with_cpu_and_cuda_targets() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    stages = dict((s, f) for f, s in re.findall(r"^FROM (\S+) AS ([\w-]+)$", dockerfile, re.M))
    assert {"build", "runtime", "cpu", "cuda", "api", "cpu-only"} <= stages.keys()
    assert stages["api"] == "base" and stages["cpu-only"] == "base"  # no full venv under them
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.M)
    # a tag, or a tag pinned by digest (scripts/pin-base-image.sh)
    assert base is not None
    assert re.fullmatch(r"python:3\.11[\w.-]*(@sha256:[0-9a-f]{64})?", base[1])
    assert "--require-hashes -r /tmp/requirements.lock" in dockerfile
    assert "--require-hashes -r /tmp/requirements-api.lock" in dockerfile
    # the CPU-only image takes no CUDA build: torch and torchvision from the CPU index
    cpu = dockerfile.split("AS build-cpu")[1].split("\nFROM ")[0]
    assert "download.pytorch.org/whl/cpu" in cpu and "torch==2.14.1+cpu" in cpu
    assert "requirements.lock" not in cpu.replace("requirements-cpu-extra.lock", "")
    # the runtime user's HOME is writable: the volume every pod mounts there, not the root
    home = re.search(r"HOME=(\S+)", dockerfile)
    assert home is not None and home[1] == "/var/lib/moderation"
    assert f"--home-dir {home[1]}" in dockerfile
    assert "pip install --no-deps /src" in dockerfile  # nothing resolved outside the lock
    users = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert users == ["10001:10001"]
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path


def test_the_api_and_cpu_locks_are_the_full_lock_without_torch_or_cuda() -> None:
    generator = _load_script("image_locks")
    assert generator.TARGET.read_text() == generator.render(), "run `make lock`"
    assert generator.CPU_EXTRA.read_text() == generator.render_cpu_extra(), "run `make lock`"
    full = {name: block for name, block, _ in generator.entries(generator.FULL.read_text())}
    api = {name: block for name, block, _ in generator.entries(generator.TARGET.read_text())}
    extra = {name: block for name, block, _ in generator.entries(generator.CPU_EXTRA.read_text())}
    for name, block in {**api, **extra}.items():
        assert full[name] == block, name  # the same pin and hashes
    heavy = re.compile(r"^(torch|torchvision|open-clip-torch|triton|nvidia-.*|cuda-.*)$")
    assert not [n for n in api if heavy.match(n)]
    assert not [n for n in extra if generator.CUDA.match(n)] and "open-clip-torch" in extra
    assert {"fastapi", "uvicorn", "boto3", "redis", "psycopg"} <= api.keys()


def test_the_lock_pins_every_dependency_with_hashes() -> None:
    import tomllib

    lock = (DEPLOY / "requirements.lock").read_text()
    entries = re.findall(
        r"^([A-Za-z0-9_.-]+)==(\S+) \\\n((?:\s+--hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)", lock, re.M
    )
    pinned = {re.sub(r"[-_.]+", "-", name).lower(): version for name, version, _ in entries}
    assert len(entries) == len(re.findall(r"^\S+==", lock, re.M))  # each pin has its hashes
    assert pinned["torch"] == "2.14.1" and pinned["torchvision"] == "0.29.1"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() in pinned, requirement


# --- the local stack (compose) -------------------------------------------------------------------


def _compose(*files: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name in files:
        doc = yaml.safe_load((DEPLOY / name).read_text())
        for service, body in doc.get("services", {}).items():
            merged.setdefault("services", {}).setdefault(service, {})
            for key, value in body.items():
                old = merged["services"][service].get(key)
                if isinstance(old, dict) and isinstance(value, dict):
                    merged["services"][service][key] = {**old, **value}
                else:
                    merged["services"][service][key] = value
        merged.setdefault("volumes", {}).update(doc.get("volumes") or {})
    return merged


#: ``${NAME}``, ``${NAME:-default}``, ``${NAME:?message}`` (a message may hold ``{...}``).
INTERPOLATION = re.compile(r"\$\{(\w+)(?::[?-](?:[^{}]|\{[^{}]*\})*)?\}")


def _stack_env_keys() -> set[str]:
    script = (ROOT / "scripts" / "local-stack-env.sh").read_text()
    return set(re.findall(r"^([A-Z_]+)=", script, re.M))


def test_compose_references_only_images_files_and_settings_that_exist() -> None:
    compose = _compose("compose.yaml")
    services = compose["services"]
    assert set(services) == {
        "postgres",
        "valkey",
        "minio",
        "audit-bucket",
        "api",
        "worker",
        "prometheus",
        "grafana",
    }
    stages = set(re.findall(r"^FROM \S+ AS (\w+)$", (DEPLOY / "Dockerfile").read_text(), re.M))
    raw = (DEPLOY / "compose.yaml").read_text()
    for name, service in services.items():
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), name
        if "build" in service:
            build = service["build"]
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file() and build["target"] in stages
        assert service.get("restart") in ({"no"} if name == "audit-bucket" else {"unless-stopped"})
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
            else:
                assert source in compose["volumes"], f"{name}: {source}"
        for key in service.get("environment", {}):
            if key.startswith("MODERATION_"):
                assert setting_exists(key), f"{name}: {key}"
    # Every variable the file needs is one `make stack` writes (or has a default).
    needed = set(re.findall(r"\$\{(\w+):\?", raw))
    assert needed <= _stack_env_keys(), needed - _stack_env_keys()
    # The API and worker environments make a production Settings that starts.
    filled = {k: _stand_in(k) for k in _stack_env_keys()}
    filled["API_KEYS"] = _stand_in("MODERATION_API_KEYS")
    for name in ("api", "worker"):
        env = {
            k: re.sub(INTERPOLATION, lambda m: filled.get(m[1], "true"), str(v))
            for k, v in services[name]["environment"].items()
        }
        settings = Settings(_env_file=None, **_settings_kwargs(env))
        assert settings.enforce_security() == [] and settings.audit.bucket == "moderation-audit"


def test_compose_stack_wiring_durability_and_shutdown() -> None:
    services = _compose("compose.yaml")["services"]
    for name in ("api", "worker"):  # records and results go to PostgreSQL, once it is healthy
        assert services[name]["depends_on"]["postgres"] == {"condition": "service_healthy"}
        url = services[name]["environment"]["MODERATION_DATABASE__URL"]
        assert url.startswith("postgresql://moderation:${POSTGRES_PASSWORD")
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    valkey = " ".join(services["valkey"]["command"])
    for flag in ("--appendonly yes", "--appendfsync everysec", "--requirepass", "noeviction"):
        assert flag in valkey
    worker = services["worker"]
    env = worker["environment"]
    assert worker["stop_grace_period"] == "120s"
    assert float(env["MODERATION_QUEUE__SHUTDOWN_TIMEOUT_S"]) < 120
    assert (
        f":{env['MODERATION_QUEUE__WORKER_HEALTH_PORT']}/livez" in worker["healthcheck"]["test"][-1]
    )
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"][0]
        for job in prometheus["scrape_configs"]
    }
    assert targets["moderation-worker"] == f"worker:{env['MODERATION_QUEUE__WORKER_METRICS_PORT']}"
    assert targets["moderation-api"] == "api:" + services["api"]["command"][-1]
    assert prometheus["rule_files"] == ["alerts.yaml"] and RULES.parent.name == "prometheus"
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "moderation.yaml").read_text()
    )
    dashboards = provider["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{dashboards}:ro" in services["grafana"]["volumes"]
    datasource = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    gpu = _compose("compose.yaml", "compose.gpu.yaml")["services"]["worker"]
    assert (
        gpu["build"]["target"] == "cuda"
        and gpu["environment"]["MODERATION_MODEL__DEVICE"] == "cuda"
    )
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
