"""deploy/k8s validated offline: every built-in object against the Kubernetes schemas
(kubernetes-validate, strict: unknown fields rejected), KEDA's objects by structure, and
the names the objects use for each other agree."""

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from jobs.catalog import queues

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBERNETES = "1.30.0"


def objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    found = []
    for name in kustomization["resources"]:
        found += [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]
    return found


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects() if o["kind"] == kind}


BUILT_IN = [o for o in objects() if not o["apiVersion"].startswith("keda.sh/")]


@pytest.mark.parametrize("resource", BUILT_IN, ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_each_object_matches_the_kubernetes_schema(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, KUBERNETES, strict=True)
    if resource["kind"] != "Namespace":
        assert resource["metadata"]["namespace"] == "seekq"


def test_gpu_workers_take_one_gpu_each_and_pin_it() -> None:
    deployments = by_kind("Deployment")
    gpu = [d for d in deployments.values() if "--gpu" in _container(d)["args"]]
    assert {d["metadata"]["name"] for d in gpu} == {
        "seekq-worker-generate",
        "seekq-worker-embed",
        "seekq-worker-finetune",
    }
    for deployment in gpu:
        container = _container(deployment)
        assert container["args"][-2:] == ["--gpu", "0"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_every_worker_queue_exists_and_every_queue_has_a_worker() -> None:
    consumed: set[str] = set()
    for deployment in by_kind("Deployment").values():
        args = _container(deployment)["args"]
        if args[0] == "worker":
            consumed |= set(args[args.index("--queues") + 1].split(","))
    assert consumed <= set(queues())
    assert set(queues()) - consumed == {"cpu.ping"}  # the canary queue needs no pod


def test_keda_scales_gpu_workers_on_their_redis_queue() -> None:
    deployments = by_kind("Deployment")
    scaled = by_kind("ScaledObject")
    assert set(scaled) == {"seekq-worker-generate", "seekq-worker-embed"}
    auth = by_kind("TriggerAuthentication")
    for name, scaler in scaled.items():
        assert scaler["apiVersion"] == "keda.sh/v1alpha1"
        target = deployments[scaler["spec"]["scaleTargetRef"]["name"]]
        queue = _container(target)["args"][2]
        [trigger] = scaler["spec"]["triggers"]
        assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == queue, name
        assert int(trigger["metadata"]["listLength"]) > 0
        assert trigger["authenticationRef"]["name"] in auth
        assert 1 <= scaler["spec"]["minReplicaCount"] < scaler["spec"]["maxReplicaCount"]


def test_pods_read_the_config_and_the_secret_and_mount_the_shared_volume() -> None:
    claims = by_kind("PersistentVolumeClaim")
    for deployment in by_kind("Deployment").values():
        container = _container(deployment)
        sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
        assert sources == {"seekq-config", "seekq-secrets"}
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        assert any(v.get("persistentVolumeClaim", {}).get("claimName") in claims for v in volumes)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container
