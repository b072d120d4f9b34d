"""deploy/helm/tuneserve: rendered by Helm's own Go SDK (helm-python-sdk binds it: no helm binary
installs on this machine), validated against Kubernetes' OpenAPI schemas, and checked for the
wiring that breaks LLM deployments: probes, drain, /dev/shm, cache volume, adapters ConfigMap."""

import copy

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.deploy.monitoring import CHART

KUBERNETES_VERSIONS = ["1.29.0", "1.33.0"]
FULL_CPU = {
    "device": "cpu",
    "serve": {"model": "smollm2-135m-instruct", "kvCacheGib": 2, "servedModelName": ["smollm2"], "extraArgs": ["--speculative", "ngram"]},
    "adapters": {"dates": "/adapters/dates", "support": {"path": "/adapters/support", "version": 2}},
    "adapterVolume": {"existingClaim": "adapters"},
    "auth": {"apiKeySecret": {"name": "tuneserve-key"}, "keysFileSecret": {"name": "tuneserve-tenants"}},
    "modelCache": {"accessModes": ["ReadWriteMany"], "storageClassName": "nfs"},
    "replicaCount": 3,
    "metrics": {"serviceMonitor": {"enabled": True}},
}
VALUE_SETS = {
    "defaults (gpu)": {},
    "cpu, adapters, keys, 3 replicas": FULL_CPU,
    "tensor x pipeline parallel": {"parallelism": {"tensor": 2, "pipeline": 2, "data": 1}},
    "keda autoscaling": {"autoscaling": {"enabled": True}, "modelCache": {"existingClaim": "models"}},
    "hpa autoscaling": {"autoscaling": {"enabled": True, "kind": "hpa"}, "modelCache": {"accessModes": ["ReadWriteMany"]}},
    "no cache volume": {"modelCache": {"enabled": False}, "podDisruptionBudget": {"enabled": False}},
    "router in front": {"router": {"enabled": True}, "replicaCount": 2, "modelCache": {"accessModes": ["ReadWriteMany"]}},
}


def render(values: dict) -> dict[str, dict]:
    """kind -> manifest (the server's objects), "router <kind>" for the router's (at most one of each)."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name="demo", namespace="llm")
    docs = [d for name, text in rendered.items() if not name.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]
    by_kind = {("router " if name.endswith("router.yaml") else "") + d["kind"]: d
               for name, text in rendered.items() if not name.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d}
    assert len(by_kind) == len(docs)
    return by_kind


def container(manifests: dict) -> dict:
    return manifests["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
def test_rendered_manifests_validate_against_kubernetes_schemas(values, kube_version):
    for kind, manifest in render(values).items():
        if kind in ("ServiceMonitor", "ScaledObject"):  # CRDs: checked below against what they must reference
            continue
        kubernetes_validate.validate(manifest, kube_version, strict=True)


def test_the_validator_rejects_what_kubernetes_would():
    deployment = render({})["Deployment"]
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/health", "port": "http"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.33.0", strict=True)
    broken = copy.deepcopy(deployment)
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.33.0", strict=True)


def test_helm_lint_finds_no_errors_or_warnings():
    report = helm.lint(CHART, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values, message", [
    ({"device": "tpu"}, "'/device': value must be one of 'gpu', 'cpu'"),
    ({"replicas": 2}, "additional properties 'replicas' not allowed"),
    ({"serve": {"model": "m", "maxLoraRank": 12}}, "'/serve/maxLoraRank': value must be one of 1, 8, 16"),
    ({"serve": {"model": "m", "kvCacheGib": "lots"}}, "/serve/kvCacheGib"),
    ({"adapters": {"bad name": "/x"}}, "invalid propertyName 'bad name'"),
    ({"adapters": {"a": {"pth": "/x"}}}, "/adapters/a"),
    ({"probes": {"startup": {"periodSeconds": 0, "failureThreshold": 1, "timeoutSeconds": 1}}}, "/probes/startup/periodSeconds"),
    ({"autoscaling": {"kind": "vpa"}}, "/autoscaling/kind"),
])
def test_the_values_schema_rejects_bad_values_naming_the_key(values, message):
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError, match="schema") as error:
        chart.render(values, name="demo", namespace="llm")
    assert message in str(error.value)


def test_several_replicas_on_a_read_write_once_cache_fail_with_the_fix():
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmRenderError, match=r"set modelCache.accessModes to \[ReadWriteMany\]"):
        chart.render({"replicaCount": 2}, name="demo", namespace="llm")


def test_gpu_pods_request_gpus_and_tolerate_gpu_nodes():
    pod = render({})["Deployment"]["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1 and resources["requests"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert container(render(FULL_CPU))["image"].endswith(":0.1.0-cpu")
    assert "nvidia.com/gpu" not in str(render(FULL_CPU)["Deployment"])


def test_probes_shm_drain_and_cache_are_wired_for_a_slow_starting_model():
    manifests = render(FULL_CPU)
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    main = container(manifests)
    args = main["args"]
    startup = main["startupProbe"]
    assert startup["httpGet"]["path"] == "/health" and startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert main["readinessProbe"]["httpGet"]["path"] == "/ready" and main["livenessProbe"]["httpGet"]["path"] == "/health"
    assert {p["name"] for p in main["ports"]} >= {main[p]["httpGet"]["port"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    # SIGTERM drains for --drain-timeout-s after the preStop sleep; the grace period covers both.
    pre_stop_s = int(main["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + float(flag(args, "--drain-timeout-s"))
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    cache = volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"]
    assert cache == manifests["PersistentVolumeClaim"]["metadata"]["name"]
    assert {"name": "TUNESERVE_HOME", "value": "/data"} in main["env"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["fsGroup"] == 10001
    assert flag(args, "--kv-cache-gib") == "2" and flag(args, "--speculative") == "ngram"


def test_the_adapters_configmap_is_what_every_replica_reconciles():
    manifests = render(FULL_CPU)
    main, pod = container(manifests), manifests["Deployment"]["spec"]["template"]["spec"]
    configmap = manifests["ConfigMap"]
    declared = yaml.safe_load(configmap["data"]["adapters.yaml"])
    assert declared == {"adapters": FULL_CPU["adapters"]}
    from tuneserve.server.adapters_file import AdaptersFile

    AdaptersFile.model_validate(declared)  # the server accepts what the chart writes
    mount = next(m for m in main["volumeMounts"] if m["name"] == "adapters-file")
    assert "subPath" not in mount  # a subPath mount never sees ConfigMap updates
    assert flag(main["args"], "--adapters-file") == f"{mount['mountPath']}/adapters.yaml"
    volume = next(v for v in pod["volumes"] if v["name"] == "adapters-file")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    # Not in the pod template's checksums: an adapters change must not restart the pods.
    assert not any("adapters" in key for key in manifests["Deployment"]["spec"]["template"]["metadata"]["annotations"])
    assert yaml.safe_load(render({})["ConfigMap"]["data"]["adapters.yaml"]) == {"adapters": {}}
    keys = next(m for m in main["volumeMounts"] if m["name"] == "keys")
    assert flag(main["args"], "--api-keys") == f"{keys['mountPath']}/keys.yaml"


def test_service_monitor_pdb_and_autoscalers_select_this_release():
    manifests = render(FULL_CPU)
    pod_labels = manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = manifests["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert manifests["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    monitor = manifests["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    keda = render(VALUE_SETS["keda autoscaling"])
    assert "replicas" not in keda["Deployment"]["spec"]  # the autoscaler owns the count
    scaled = keda["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == keda["Deployment"]["metadata"]["name"]
    assert f'service="{keda["Service"]["metadata"]["name"]}"' in scaled["spec"]["triggers"][0]["metadata"]["query"]
    hpa = render(VALUE_SETS["hpa autoscaling"])
    assert hpa["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == hpa["Deployment"]["metadata"]["name"]


def test_parallel_pods_request_a_gpu_per_rank_and_pass_the_sizes():
    manifests = render({"parallelism": {"tensor": 4, "pipeline": 2, "data": 1}})
    main = container(manifests)
    assert flag(main["args"], "--tensor-parallel-size") == "4" and flag(main["args"], "--pipeline-parallel-size") == "2"
    assert "--data-parallel-size" not in main["args"]
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 8 == main["resources"]["requests"]["nvidia.com/gpu"]
    assert container(render({"gpu": {"count": 2, "resourceName": "nvidia.com/gpu"}}))["resources"]["limits"]["nvidia.com/gpu"] == 2


def test_the_router_finds_this_releases_server_pods_and_only_them():
    from vllm_router.launch_router import parse_router_args

    manifests = render({"router": {"enabled": True, "policy": "round_robin", "extraArgs": ["--retry-max-backoff-ms", "2000"]},
                        "replicaCount": 2, "modelCache": {"accessModes": ["ReadWriteMany"]}})
    server_labels = manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]
    router_pod = manifests["router Deployment"]["spec"]["template"]
    router = router_pod["spec"]["containers"][0]
    args = parse_router_args(router["args"])  # vllm-router's own parser: an unknown flag exits
    assert args.service_discovery and args.service_discovery_namespace == "llm" and args.service_discovery_port == 8000
    assert args.policy == "round_robin" and args.retry_max_backoff_ms == 2000
    selector = dict(item.split("=") for item in args.selector) if isinstance(args.selector, list) else args.selector
    assert selector.items() <= server_labels.items()  # every server pod matches ...
    assert not selector.items() <= router_pod["metadata"]["labels"].items()  # ... and no router pod
    service_selector = manifests["Service"]["spec"]["selector"]
    assert not service_selector.items() <= router_pod["metadata"]["labels"].items()  # the server Service skips routers
    assert manifests["router Service"]["spec"]["selector"].items() <= router_pod["metadata"]["labels"].items()
    rule = manifests["router Role"]["rules"][0]
    assert rule["resources"] == ["pods"] and set(rule["verbs"]) == {"get", "list", "watch"}
    assert manifests["router RoleBinding"]["subjects"][0]["name"] == router_pod["spec"]["serviceAccountName"]
    assert "router Deployment" not in render({})
