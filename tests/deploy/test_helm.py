"""helm/cfpo: Helm (bundled by helm-python-sdk) renders and lints the chart offline, every manifest validates
against Kubernetes' schema (kubernetes-validate, strict) for the default values and values-gpu.yaml, the command
lines parse with the CLIs they start, and the objects do what the values say."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from cfpo.cli.app import SERVICES
from tests import REPO_ROOT
from trainer.__main__ import parse_settings as learner_settings

CHART = REPO_ROOT / "helm/cfpo"
GPU_VALUES = yaml.safe_load((CHART / "values-gpu.yaml").read_text())
VALUE_SETS = {"default": {}, "gpu": GPU_VALUES}
# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
# kubernetes-validate knows only built-in kinds; objects of these CRD groups are checked by their structure.
CRD_GROUPS = ("monitoring.coreos.com/",)
PIPELINE = ("generation", "learner", "rollout", "reward", "control")
DATA = "/data"
RELEASE = "cfpo"
SMOLLM2 = f"{DATA}/models/smollm2-135m-instruct"


def render(values: dict | None = None, chart: Path = CHART) -> dict[str, str]:
    with helm.Chart.load(chart) as loaded:
        return loaded.render(values or {}, name=RELEASE, namespace="ml")


def objects(values: dict | None = None, chart: Path = CHART) -> list[dict]:
    return [
        doc
        for path, text in render(values, chart).items()
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def of_kind(objs: list[dict], kind: str, component: str | None = None) -> list[dict]:
    return [
        o
        for o in objs
        if o["kind"] == kind and component in (None, o["metadata"]["labels"]["app.kubernetes.io/component"])
    ]


def one(objs: list[dict], kind: str, component: str) -> dict:
    [found] = of_kind(objs, kind, component)
    return found


def pod(objs: list[dict], component: str) -> dict:
    kind = "StatefulSet" if component in ("redis", "generation") else "Deployment"
    return one(objs, kind, component)["spec"]["template"]


def container(objs: list[dict], component: str) -> dict:
    [main] = pod(objs, component)["spec"]["containers"]
    return main


def env(main: dict) -> dict[str, dict]:
    return {variable["name"]: variable for variable in main.get("env", [])}


def gpus(main: dict) -> tuple[int | None, int | None]:
    resources = main["resources"]
    return (resources.get("requests", {}).get("nvidia.com/gpu"), resources.get("limits", {}).get("nvidia.com/gpu"))


def serve_args(main: dict, service: str) -> list[str]:
    command = main["command"]
    assert command[:3] == ["cfpo", "serve", service] and service in SERVICES
    return command[3:]


TORCH_LAUNCHER = ["python", "-m", "torch.distributed.run"]  # the image's python: its environment has DeepSpeed


def learner_args(main: dict) -> list[str]:
    """The learner's own arguments, under torch's launcher (parsed with its parser) or `cfpo serve learner`."""
    command = main["command"]
    if command[:3] != TORCH_LAUNCHER:
        return serve_args(main, "learner")
    from torch.distributed.run import get_args_parser

    launcher = get_args_parser().parse_args(command[3:])
    assert launcher.module and launcher.standalone and launcher.training_script == "trainer"
    return launcher.training_script_args


# --- Helm and Kubernetes accept the chart ------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_lint_is_clean(values):
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBERNETES_VERSIONS[0]}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []  # warnings fail `helm lint --strict`


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_manifest_validates_against_kubernetes(values):
    objs = objects(values)
    for obj in objs:
        if obj["apiVersion"].startswith(CRD_GROUPS):  # ServiceMonitor: no schema offline
            assert obj["kind"] == "ServiceMonitor" and obj["spec"]["endpoints"] and obj["spec"]["selector"]
            continue
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    kinds = sorted(o["kind"] for o in objs)
    assert kinds.count("Deployment") == 4 and kinds.count("StatefulSet") == 2 and kinds.count("NetworkPolicy") == 3
    assert {"StatefulSet", "PersistentVolumeClaim", "Secret", "Service"} <= set(kinds)


def test_validation_is_strict():
    """The check above would pass anything if the validator ignored unknown fields."""
    deployment = one(objects(), "Deployment", "control")
    deployment["spec"]["template"]["spec"]["containers"][0]["gpu"] = 1
    with pytest.raises(kubernetes_validate.ValidationError, match="gpu"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"generation": {"replicas": "two"}}, "/generation/replicas"),
        ({"learner": {"gpu": 2}}, "'gpu' not allowed"),
        ({"generation": {"gpus": 2}}, "generation.gpus: 2 GPUs per pod, but tensorParallel x dataParallel is 1"),
        ({"generation": {"tensorParallel": 2}}, "vLLM on CPU runs without them"),
        ({"weightTransfer": "ipc"}, "weightTransfer: ipc needs the learner and generation on one GPU in one pod"),
        ({"weightTransfer": "gloo"}, "/weightTransfer"),
        ({"model": {"path": "/models/mine"}}, "/model/path"),
        ({"control": {"apiToken": {"value": "short"}}}, "/control/apiToken/value"),
        ({"redis": {"enabled": False}}, "set externalRedis.url or externalRedis.existingSecret"),
        (
            {"reward": {"autoscaling": {"enabled": True}, "resources": {"requests": {"cpu": None}}}},  # null: unset
            "needs reward.resources.requests.cpu",
        ),
    ],
)
def test_bad_values_fail_with_a_clear_error(values, message):
    with pytest.raises(helm.HelmError, match=message):
        render(values)


# --- the processes: command lines, GPUs, data volume ------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_commands_parse_with_the_clis_they_start(values, monkeypatch):
    from services.control.__main__ import parse_settings as control_settings
    from services.generation.__main__ import ENTRYPOINT as generation_entrypoint
    from services.reward.__main__ import parse_settings as reward_settings
    from services.rollout.__main__ import parse_settings as rollout_settings

    objs = objects(values)
    ports = {c: container(objs, c)["ports"][0]["containerPort"] for c in PIPELINE}

    # parsed, not validated: the model directory exists in the pod only
    generation = vars(
        generation_entrypoint.parser().parse_args(serve_args(container(objs, "generation"), "generation"))
    )
    assert (generation["host"], int(generation["port"]), generation["model"]) == (
        "0.0.0.0",
        ports["generation"],
        SMOLLM2,
    )
    assert generation["device"] == ("cuda" if values.get("generation", {}).get("gpus") else "cpu")

    reward = reward_settings(serve_args(container(objs, "reward"), "reward"))
    assert (reward.host, reward.port, reward.ray) == ("0.0.0.0", ports["reward"], False)

    # The API refuses to listen beyond loopback without its token, which the pod gets from the Secret.
    assert "CFPO_API_TOKEN" in env(container(objs, "control"))
    monkeypatch.setenv("CFPO_API_TOKEN", "a-token-from-the-secret")
    control = control_settings(serve_args(container(objs, "control"), "control"))
    assert (control.host, control.port) == ("0.0.0.0", ports["control"])

    rollout = rollout_settings(serve_args(container(objs, "rollout"), "rollout"))
    assert (rollout.worker, rollout.metrics_host, rollout.metrics_port) == (True, "0.0.0.0", ports["rollout"])

    learner = learner_settings(learner_args(container(objs, "learner")))
    assert (learner.worker, learner.metrics_host, learner.metrics_port) == (True, "0.0.0.0", ports["learner"])
    assert str(learner.runs_dir).startswith(f"{DATA}/")


def test_default_values_request_no_gpus():
    objs = objects()
    assert "nvidia.com/gpu" not in json.dumps(objs)
    assert container(objs, "learner")["command"][:3] == ["cfpo", "serve", "learner"]
    assert {container(objs, c)["image"] for c in PIPELINE} == {"cfpo/cfpo:0.1.0"}


def test_gpu_values_give_generation_and_learner_their_gpus():
    objs = objects(GPU_VALUES)
    assert gpus(container(objs, "generation")) == (1, 1)
    learner = container(objs, "learner")
    assert gpus(learner) == (1, 1)
    # One GPU takes the multi-GPU path too: torch's launcher with one rank (issue 28's acceptance).
    assert learner["command"][:5] == [*TORCH_LAUNCHER, "--standalone", "--nproc-per-node=1"]
    assert learner_settings(learner_args(learner)).worker
    for component in ("rollout", "reward", "control", "redis"):
        assert gpus(container(objs, component)) == (None, None)
    assert {c: container(objs, c)["image"] for c in ("generation", "learner", "reward")} == {
        "generation": "cfpo/cfpo-gpu:0.1.0",
        "learner": "cfpo/cfpo-gpu:0.1.0",
        "reward": "cfpo/cfpo:0.1.0",
    }


@pytest.mark.parametrize(
    ("count", "launcher"),
    [
        (0, ["cfpo", "serve", "learner"]),
        (1, [*TORCH_LAUNCHER, "--standalone", "--nproc-per-node=1"]),
        (4, [*TORCH_LAUNCHER, "--standalone", "--nproc-per-node=4"]),
    ],
)
def test_learner_launcher_follows_its_gpu_count(count, launcher):
    main = container(objects({"learner": {"gpus": count}}), "learner")
    assert main["command"][: len(launcher)] == launcher
    assert gpus(main) == ((count, count) if count else (None, None))
    [threads] = [e for e in main["env"] if e["name"] == "OMP_NUM_THREADS"]
    assert threads["valueFrom"]["resourceFieldRef"]["divisor"] == str(max(count, 1))  # each rank's share of the CPUs
    # Both launchers hand the learner the same arguments.
    cpu = container(objects(), "learner")
    assert learner_args(main) == learner_args(cpu)


def test_the_gpu_images_multi_gpu_learner_starts_through_its_python():
    """The GPU image's venv has no `torchrun` (torch is the base image's), and the base image's `torchrun` runs a
    Python without DeepSpeed or the project: the chart starts torch's launcher with the image's `python`."""
    main = container(objects({**GPU_VALUES, "learner": {**GPU_VALUES["learner"], "gpus": 2}}), "learner")
    assert main["command"][:5] == [*TORCH_LAUNCHER, "--standalone", "--nproc-per-node=2"]
    assert main["image"] == "cfpo/cfpo-gpu:0.1.0"
    learner = learner_settings(learner_args(main))
    assert learner.worker and learner.metrics_port == 9101


def test_learner_generation_and_rollout_share_the_data_volume_at_one_path():
    """The learner hands weight files to generation by path; rollout workers read the model's tokenizer."""
    objs = objects()
    claim = one(objs, "PersistentVolumeClaim", "data")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for component, read_only in (("learner", False), ("generation", True), ("rollout", True)):
        spec = pod(objs, component)["spec"]
        [volume] = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        [mount] = [m for m in container(objs, component)["volumeMounts"] if m["name"] == volume["name"]]
        assert (mount["mountPath"], mount.get("readOnly", False)) == (DATA, read_only)


def test_smollm2_is_prepared_unless_a_model_is_given():
    objs = objects()
    [init] = pod(objs, "generation")["spec"]["initContainers"]
    assert init["command"] == ["cfpo", "model", "smollm2", SMOLLM2]
    assert f"--model={SMOLLM2}" in container(objs, "generation")["command"]

    objs = objects({"model": {"path": "/data/models/mine"}, "persistence": {"existingClaim": "models"}})
    assert "initContainers" not in pod(objs, "generation")["spec"]
    assert "--model=/data/models/mine" in container(objs, "generation")["command"]
    assert of_kind(objs, "PersistentVolumeClaim") == []
    assert pod(objs, "learner")["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "models"


# --- Redis ---------------------------------------------------------------------------------------------------


def test_chart_redis_is_persistent_and_every_client_uses_it():
    objs = objects()
    redis = one(objs, "StatefulSet", "redis")
    assert "--appendonly" in redis["spec"]["template"]["spec"]["containers"][0]["command"]
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "8Gi"
    service = one(objs, "Service", "redis")["metadata"]["name"]
    for component in ("learner", "rollout", "control"):
        assert env(container(objs, component))["REDIS_URL"]["value"] == f"redis://{service}:6379/0"


@pytest.mark.parametrize(
    ("external", "expected"),
    [
        ({"url": "redis://redis.example.internal:6379/2"}, {"value": "redis://redis.example.internal:6379/2"}),
        (
            {"existingSecret": "redis-credentials"},
            {"valueFrom": {"secretKeyRef": {"name": "redis-credentials", "key": "redis-url"}}},
        ),
    ],
)
def test_external_redis_replaces_the_chart_redis(external, expected):
    objs = objects({"redis": {"enabled": False}, "externalRedis": external})
    assert [o for o in objs if o["metadata"]["labels"]["app.kubernetes.io/component"] == "redis"] == []
    for component in ("learner", "rollout", "control"):
        variable = env(container(objs, component))["REDIS_URL"]
        assert {k: v for k, v in variable.items() if k != "name"} == expected


# --- exposure: generation stays private, only the control API faces users ----------------------------------------


def selects(peer: dict, component: str) -> bool:
    return peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == component


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_generation_admits_only_the_pipeline_and_scrapers(values):
    objs = objects(values)
    assert one(objs, "Service", "generation")["spec"]["type"] == "ClusterIP"
    policy = one(objs, "NetworkPolicy", "generation")["spec"]
    for component in PIPELINE:  # it selects generation's pods and no others
        selected = policy["podSelector"]["matchLabels"].items() <= pod(objs, component)["metadata"]["labels"].items()
        assert selected == (component == "generation")
    assert policy["policyTypes"] == ["Ingress"]
    pipeline, scrapers = policy["ingress"]
    assert [c for c in PIPELINE if any(selects(peer, c) for peer in pipeline["from"])] == [
        "learner",
        "rollout",
        "control",
    ]
    assert scrapers["from"] == [MONITORING_PROMETHEUS]  # in a named namespace, not any pod that takes the label
    for rule in policy["ingress"]:
        assert rule["ports"] == [{"port": 8000, "protocol": "TCP"}]


MONITORING_PROMETHEUS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}


def test_reward_admits_only_this_releases_pipeline_and_scrapers():
    objs = objects()
    policy = one(objs, "NetworkPolicy", "reward")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod(objs, "reward")["metadata"]["labels"].items()
    pipeline, scrapers = policy["ingress"]
    assert [c for c in PIPELINE if any(selects(peer, c) for peer in pipeline["from"])] == [
        "learner",
        "rollout",
        "control",
    ]
    for peer in pipeline["from"]:  # this release's pods only: another release's learner is not admitted
        assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE
    assert scrapers["from"] == [MONITORING_PROMETHEUS]
    assert [rule["ports"] for rule in policy["ingress"]] == [[{"port": 8011, "protocol": "TCP"}]] * 2


def test_the_control_api_checks_specs_against_the_reward_service_and_the_data_volume():
    objs = objects()
    control = pod(objs, "control")["spec"]
    env = {e["name"]: e.get("value") for e in control["containers"][0]["env"]}
    assert env["CFPO_REWARD_URL"].endswith(":8011")
    [mount] = control["containers"][0]["volumeMounts"]
    rollout_mount = next(
        m for m in pod(objs, "rollout")["spec"]["containers"][0]["volumeMounts"] if m["name"] == "data"
    )
    assert mount["readOnly"] is True and mount["mountPath"] == rollout_mount["mountPath"]


def test_no_scrapers_means_no_open_rule():
    """A NetworkPolicy rule without peers admits everyone: with no scrapers there must be no such rule."""
    objs = objects({"networkPolicy": {"metricsScrapers": []}})
    [rule] = one(objs, "NetworkPolicy", "generation")["spec"]["ingress"]
    assert len(rule["from"]) == 3
    assert of_kind(objects({"networkPolicy": {"enabled": False}}), "NetworkPolicy") == []


def test_redis_admits_only_the_pipeline():
    [rule] = one(objects(), "NetworkPolicy", "redis")["spec"]["ingress"]
    assert [c for c in PIPELINE if any(selects(peer, c) for peer in rule["from"])] == ["learner", "rollout", "control"]


def test_ingress_routes_only_to_the_control_api():
    objs = objects(GPU_VALUES)
    control = one(objs, "Service", "control")
    [ingress] = of_kind(objs, "Ingress")
    backends = [path["backend"]["service"] for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    assert backends == [{"name": control["metadata"]["name"], "port": {"name": "http"}}]
    assert {p["name"] for p in control["spec"]["ports"]} == {"http"}
    assert of_kind(objects(), "Ingress") == []
    for service in of_kind(objs, "Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_api_token_comes_from_a_secret():
    objs = objects()
    [secret] = of_kind(objs, "Secret")
    token_ref = env(container(objs, "control"))["CFPO_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token_ref == {"name": secret["metadata"]["name"], "key": "token"}
    assert len(base64.b64decode(secret["data"]["token"])) >= 32  # generated when none is given

    [secret] = of_kind(objects({"control": {"apiToken": {"value": "a-token-of-our-own"}}}), "Secret")
    assert base64.b64decode(secret["data"]["token"]) == b"a-token-of-our-own"

    objs = objects({"control": {"apiToken": {"existingSecret": "cfpo-api", "existingSecretKey": "bearer"}}})
    assert of_kind(objs, "Secret") == []
    assert env(container(objs, "control"))["CFPO_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "cfpo-api",
        "key": "bearer",
    }


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_pods_run_unprivileged_with_probes_and_resources(values):
    objs = objects(values)
    for component in (*PIPELINE, "redis"):
        spec = pod(objs, component)["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["automountServiceAccountToken"] is False
        for main in spec["containers"] + spec.get("initContainers", []):
            assert main["securityContext"]["allowPrivilegeEscalation"] is False
            assert main["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert main["resources"]["requests"]["memory"]
        assert "livenessProbe" in spec["containers"][0] and "readinessProbe" in spec["containers"][0]
    assert pod(objs, "generation")["spec"]["securityContext"]["runAsUser"] == 1000


def test_redis_refuses_writes_past_maxmemory_and_the_api_budget_sits_below_it():
    objs = objects()
    command = pod(objs, "redis")["spec"]["containers"][0]["command"]
    assert command[command.index("--maxmemory") + 1] == "768mb"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "--redis-budget-mib=512" in pod(objs, "control")["spec"]["containers"][0]["command"]
    with pytest.raises(helm.HelmError, match="redisBudgetMiB: 800 is not below redis.maxmemoryMiB 768"):
        render({"control": {"redisBudgetMiB": 800}})


def test_the_learner_is_given_time_to_checkpoint_and_hand_its_run_back():
    assert pod(objects(), "learner")["spec"]["terminationGracePeriodSeconds"] == 600
    shorter = pod(objects({"learner": {"terminationGracePeriodSeconds": 60}}), "learner")
    assert shorter["spec"]["terminationGracePeriodSeconds"] == 60
    assert "terminationGracePeriodSeconds" not in pod(objects(), "rollout")["spec"]  # the default 30 s suffices


# --- scaling and monitoring ----------------------------------------------------------------------------------


def test_reward_autoscaler_owns_the_replica_count():
    objs = objects({"reward": {"autoscaling": {"enabled": True, "maxReplicas": 5}}})
    [hpa] = of_kind(objs, "HorizontalPodAutoscaler")
    deployment = one(objs, "Deployment", "reward")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert "replicas" not in deployment["spec"]

    objs = objects({"reward": {"replicas": 3}})
    assert of_kind(objs, "HorizontalPodAutoscaler") == []
    assert one(objs, "Deployment", "reward")["spec"]["replicas"] == 3


def test_without_service_monitors_pods_carry_scrape_annotations():
    objs = objects()
    assert of_kind(objs, "ServiceMonitor") == []
    for component in PIPELINE:
        annotations = pod(objs, component)["metadata"]["annotations"]
        assert annotations == {
            "prometheus.io/scrape": "true",
            "prometheus.io/path": "/metrics",
            "prometheus.io/port": str(container(objs, component)["ports"][0]["containerPort"]),
        }


def test_service_monitors_scrape_every_component_through_its_service():
    objs = objects({"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}})
    monitors = of_kind(objs, "ServiceMonitor")
    assert sorted(m["metadata"]["labels"]["app.kubernetes.io/component"] for m in monitors) == sorted(PIPELINE)
    for monitor in monitors:
        component = monitor["metadata"]["labels"]["app.kubernetes.io/component"]
        service = one(objs, "Service", component)
        assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        [endpoint] = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert "annotations" not in pod(objs, component)["metadata"]


# --- Grafana dashboards ---------------------------------------------------------------------------------------


def dashboards_configmap(objs: list[dict]) -> dict | None:
    found = of_kind(objs, "ConfigMap", "dashboards")
    return found[0] if found else None


def test_dashboards_configmap_holds_each_dashboard_file(tmp_path):
    chart = tmp_path / "cfpo"
    shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("dashboards"))
    assert dashboards_configmap(objects(chart=chart)) is None  # no dashboards, no ConfigMap

    dashboards = {"a.json": {"title": "A", "panels": []}, "b.json": {"title": "B", "panels": [{"type": "stat"}]}}
    (chart / "dashboards").mkdir()
    for name, dashboard in dashboards.items():
        (chart / "dashboards" / name).write_text(json.dumps(dashboard, indent=2))
    (chart / "dashboards/notes.md").write_text("not a dashboard")
    configmap = dashboards_configmap(objects(chart=chart))
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert {name: json.loads(text) for name, text in configmap["data"].items()} == dashboards

    configmap = dashboards_configmap(
        objects({"grafanaDashboards": {"label": "dashboards", "labelValue": "cfpo"}}, chart=chart)
    )
    assert configmap["metadata"]["labels"]["dashboards"] == "cfpo"
    assert dashboards_configmap(objects({"grafanaDashboards": {"enabled": False}}, chart=chart)) is None


def test_the_charts_own_dashboards_are_shipped():
    files = {path.name: json.loads(path.read_text()) for path in (CHART / "dashboards").glob("*.json")}
    configmap = dashboards_configmap(objects())
    shipped = {} if configmap is None else {name: json.loads(text) for name, text in configmap["data"].items()}
    assert shipped == files
    assert len(json.dumps(shipped)) < 1 << 20  # a ConfigMap holds at most 1 MiB


def test_notes_tell_how_to_reach_the_api_and_submit_a_run():
    notes = render()["cfpo/templates/NOTES.txt"]
    assert "port-forward service/cfpo-control" in notes
    assert "get secret cfpo-api-token" in notes and "CFPO_API_TOKEN" in notes and "CFPO_API_URL" in notes
    assert f"model: {SMOLLM2}" in notes and "cfpo run submit" in notes
    assert "CFPO_API_URL=http://cfpo.example.com" in render(GPU_VALUES)["cfpo/templates/NOTES.txt"]


def test_every_value_is_documented():
    """helm/README.md's table names every value of values.yaml (maps users fill freely count as one value)."""
    free_form = {
        "resources",
        "nodeSelector",
        "tolerations",
        "affinity",
        "podSecurityContext",
        "securityContext",
        "annotations",
        "labels",
        "metricsScrapers",
        "tls",
    }

    def paths(values: dict, prefix: str = "") -> list[str]:
        found = []
        for key, value in values.items():
            if isinstance(value, dict) and value and key not in free_form:
                found += paths(value, f"{prefix}{key}.")
            else:
                found.append(prefix + key)
        return found

    readme = (REPO_ROOT / "helm/README.md").read_text()
    undocumented = [p for p in paths(yaml.safe_load((CHART / "values.yaml").read_text())) if f"`{p}`" not in readme]
    assert undocumented == []


def test_scale_out_renders_the_launcher_every_generation_pod_and_nccl_settings():
    values = {
        **GPU_VALUES,
        "weightTransfer": "nccl",
        "learner": {**GPU_VALUES["learner"], "gpus": 8},
        "generation": {**GPU_VALUES["generation"], "replicas": 4, "gpus": 2, "tensorParallel": 2},
    }
    objs = objects(values)
    for obj in objs:
        if not obj["apiVersion"].startswith(CRD_GROUPS):
            kubernetes_validate.validate(obj, KUBERNETES_VERSIONS[-1], strict=True)

    servers = one(objs, "StatefulSet", "generation")
    service = one(objs, "Service", "generation")
    assert servers["spec"]["replicas"] == 4 and servers["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"  # headless: one DNS name per pod
    generation = container(objs, "generation")
    assert {"--tensor-parallel-size=2", "--weight-transfer=nccl"} <= set(generation["command"])
    assert gpus(generation) == (2, 2)

    learner = container(objs, "learner")
    assert learner["command"][:5] == [*TORCH_LAUNCHER, "--standalone", "--nproc-per-node=8"]
    memory = {kind: learner["resources"][kind]["memory"] for kind in ("requests", "limits")}
    assert memory == {"requests": "656Gi", "limits": "656Gi"}  # 16Gi of shm + 8 ranks x 80Gi
    variables = env(learner)
    name = service["metadata"]["name"]
    assert variables["CFPO_GENERATION_URL"]["value"].split(",") == [f"http://{name}-{i}.{name}:8000" for i in range(4)]
    assert variables["CFPO_WEIGHT_TRANSFER"]["value"] == "nccl"
    assert variables["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env(container(objs, "rollout"))["CFPO_GENERATION_URL"] == variables["CFPO_GENERATION_URL"]


# --- NCCL through the NetworkPolicies ---------------------------------------------------------------------------

NAMESPACE_LABELS = {"kubernetes.io/metadata.name": "ml"}  # the namespace `render` installs into
NCCL_PORTS = (29551, 45123)  # the learner's rendezvous (--weight-transfer-port) and an ephemeral port of NCCL's ring


def _matches(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"the check reads matchLabels only: {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


def _peer_matches(peer: dict, labels: dict) -> bool:
    """A from/to peer of a rule against a pod of this release's namespace (no ipBlock: pods are not addressed so)."""
    assert "ipBlock" not in peer, peer
    namespace, pods = peer.get("namespaceSelector"), peer.get("podSelector", {})
    return (namespace is None or _matches(namespace, NAMESPACE_LABELS)) and _matches(pods, labels)


def _port_matches(rule_ports: list[dict] | None, port: int) -> bool:
    if not rule_ports:  # no ports: every port
        return True
    return any(
        p.get("protocol", "TCP") == "TCP" and p["port"] <= port <= p.get("endPort", p["port"]) for p in rule_ports
    )


def _admitted(policies: list[dict], pod_labels: dict, peer_labels: dict, port: int, direction: str) -> bool:
    """Kubernetes' rule: traffic is open in ``direction`` unless a policy of that type selects the pod; then some
    rule of one of them must admit the peer on the port."""
    kind, peers = {"Ingress": ("ingress", "from"), "Egress": ("egress", "to")}[direction]
    selecting = [
        p["spec"]
        for p in policies
        if _matches(p["spec"]["podSelector"], pod_labels) and direction in p["spec"].get("policyTypes", ["Ingress"])
    ]
    return not selecting or any(
        (not rule.get(peers) or any(_peer_matches(peer, peer_labels) for peer in rule[peers]))
        and _port_matches(rule.get("ports"), port)
        for policy in selecting
        for rule in policy.get(kind, [])
    )


def reachable(objs: list[dict], source: str, target: str, port: int) -> bool:
    """Whether ``source``'s pods may open a TCP connection to ``target``'s pods on ``port``: the source's egress
    and the target's ingress both admit it."""
    policies = of_kind(objs, "NetworkPolicy")
    source_labels, target_labels = (pod(objs, c)["metadata"]["labels"] for c in (source, target))
    return _admitted(policies, source_labels, target_labels, port, "Egress") and _admitted(
        policies, target_labels, source_labels, port, "Ingress"
    )


NCCL_PAIRS = [("learner", "generation"), ("generation", "learner"), ("generation", "generation")]


def test_nccl_connects_every_pair_of_ranks_through_the_network_policies():
    """One NCCL group of the learner's rank 0 and every generation pod's workers: its bootstrap and ring connect any
    two of them on ephemeral ports, generation pods among themselves included (2 replicas here)."""
    values = {**GPU_VALUES, "weightTransfer": "nccl", "generation": {**GPU_VALUES["generation"], "replicas": 2}}
    objs = objects(values)
    assert one(objs, "StatefulSet", "generation")["spec"]["replicas"] == 2
    assert len(of_kind(objs, "NetworkPolicy")) == 3  # generation, reward, Redis: the check reads them all
    for source, target in NCCL_PAIRS:
        for port in NCCL_PORTS:
            assert reachable(objs, source, target, port), (source, target, port)
    for outsider in ("rollout", "control"):  # only the group's members get past the API port
        assert not reachable(objs, outsider, "generation", NCCL_PORTS[1])
        assert reachable(objs, outsider, "generation", 8000)


def test_the_file_transport_keeps_generation_to_its_api_port():
    objs = objects({**GPU_VALUES, "generation": {**GPU_VALUES["generation"], "replicas": 2}})
    for source in ("learner", "rollout", "control"):
        assert reachable(objs, source, "generation", 8000)
        assert not reachable(objs, source, "generation", NCCL_PORTS[1])
    assert not reachable(objs, "generation", "generation", 8000)
    assert not reachable(objs, "generation", "generation", NCCL_PORTS[1])


def test_the_reachability_check_sees_a_closed_port():
    """The check above must be able to fail: a policy that admits the learner on 8000 alone blocks NCCL."""
    objs = objects({**GPU_VALUES, "weightTransfer": "nccl"})
    policy = one(objs, "NetworkPolicy", "generation")["spec"]
    policy["ingress"] = [rule for rule in policy["ingress"] if "ports" in rule]
    assert not reachable(objs, "learner", "generation", NCCL_PORTS[1])
    policy["policyTypes"] = ["Ingress", "Egress"]  # and an Egress type with no egress rule blocks the other way
    assert not reachable(objs, "generation", "learner", NCCL_PORTS[0])


# --- storage --------------------------------------------------------------------------------------------------

DATA_PODS = ("generation", "learner", "rollout", "control")  # every pod that mounts the data volume


def test_a_named_storage_class_or_one_node_with_read_write_once():
    objs = objects({"persistence": {"storageClass": "nfs-client"}})
    claim = one(objs, "PersistentVolumeClaim", "data")["spec"]
    assert (claim["storageClassName"], claim["accessModes"]) == ("nfs-client", ["ReadWriteMany"])
    assert "storageClassName" not in one(objects(), "PersistentVolumeClaim", "data")["spec"]  # the default class
    for component in (*DATA_PODS, "reward", "redis"):  # placement as each component's own values say
        assert "nodeSelector" not in pod(objs, component)["spec"]

    values = {
        **GPU_VALUES,
        "persistence": {"accessModes": ["ReadWriteOnce"], "node": "gpu-node-1"},
        "learner": {**GPU_VALUES["learner"], "nodeSelector": {"nvidia.com/gpu.product": "H100"}},
    }
    objs = objects(values)
    for obj in objs:
        if not obj["apiVersion"].startswith(CRD_GROUPS):
            kubernetes_validate.validate(obj, KUBERNETES_VERSIONS[-1], strict=True)
    assert one(objs, "PersistentVolumeClaim", "data")["spec"]["accessModes"] == ["ReadWriteOnce"]
    for component in DATA_PODS:
        assert pod(objs, component)["spec"]["nodeSelector"]["kubernetes.io/hostname"] == "gpu-node-1", component
    assert pod(objs, "learner")["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == "H100"  # kept beside it
    for component in ("reward", "redis"):  # they do not mount it: free to go elsewhere
        assert "nodeSelector" not in pod(objs, component)["spec"]
    notes = render(values)["cfpo/templates/NOTES.txt"]
    assert "(ReadWriteOnce, all on node gpu-node-1)" in notes and "Pending" not in notes


def test_notes_say_why_a_read_write_many_claim_may_stay_pending():
    notes = render()["cfpo/templates/NOTES.txt"]
    assert "Pending" in notes and "persistence.storageClass" in notes and "persistence.node" in notes
    assert "Pending" not in render({"persistence": {"storageClass": "nfs-client"}})["cfpo/templates/NOTES.txt"]
