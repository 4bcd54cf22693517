"""ops/compose and ops/k8s hang together: every probe, Service, scrape target and scheduler
address points at a port the container really listens on, selectors select the right pods,
secrets and config maps exist, and workers never hold database credentials."""

from __future__ import annotations

import re
import runpy
import shlex
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.unit.test_ops import (
    COMPOSE,
    IMAGE,
    K8S,
    OPS,
    Process,
    all_processes,
    compose,
    compose_processes,
    final_stage,
    image_env,
    k8s_object,
    k8s_objects,
    k8s_processes,
    pod_spec,
    project_version,
    yaml_docs,
)
from tradewind_cluster.config.settings import ENV_PREFIX

PROMETHEUS = OPS / "prometheus"
DB_ENV = ENV_PREFIX + "DATABASE__"
ROLE_JOBS = {"scheduler": "tradewind-schedulers", "worker": "tradewind-workers"}


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _listen_port(flag_value: str) -> int:
    return int(flag_value.rpartition(":")[2])


def _by_role(procs: list[Process], role: str) -> list[Process]:
    return [p for p in procs if p.role == role]


# ---------------------------------------------------------------- both deployments
@pytest.mark.parametrize("proc", all_processes(), ids=lambda p: p.where)
def test_workers_hold_no_database_credentials(proc: Process) -> None:
    if proc.role == "worker":
        leaked = sorted({DB_ENV + "URL", DB_ENV + "URL_CMD"} & proc.env_names)
        assert not leaked, f"{proc.where}: workers must not get {leaked}"
        assert "database_url" not in proc.raw.get("secrets", [])


@pytest.mark.parametrize("proc", all_processes(), ids=lambda p: p.where)
def test_database_users_get_a_database_url(proc: Process) -> None:
    if proc.role in ("scheduler", "db"):
        assert {DB_ENV + "URL", DB_ENV + "URL_CMD"} & proc.env_names, (
            f"{proc.where}: no database URL: it would start an embedded server in the container"
        )


@pytest.mark.parametrize("proc", all_processes(), ids=lambda p: p.where)
def test_rpc_processes_share_the_token(proc: Process) -> None:
    if proc.role in ("scheduler", "worker"):
        assert {ENV_PREFIX + "RPC__TOKEN", ENV_PREFIX + "RPC__TOKEN_CMD"} & proc.env_names, (
            f"{proc.where}: no rpc token: its calls would be refused"
        )
        assert ENV_PREFIX + "RPC__ADVERTISE_HOST" in proc.env_names, (
            f"{proc.where}: peers would dial the container's hostname"
        )


def test_every_tradewind_image_has_the_project_version() -> None:
    version = project_version()
    images = [str(svc.get("image")) for svc in compose()["services"].values()]
    images += [p.raw["image"] for p in k8s_processes()]
    ours = [i for i in images if i.partition(":")[0] == IMAGE]
    assert ours
    assert set(ours) == {f"{IMAGE}:{version}"}
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert [img["newTag"] for img in kustomization["images"]] == [version]


# ---------------------------------------------------------------- compose
def test_compose_runs_the_cluster_the_docs_describe() -> None:
    procs = compose_processes()
    assert len(_by_role(procs, "scheduler")) == 3
    queues = [p.flag("--queues") for p in _by_role(procs, "worker")]
    assert len(queues) == 3
    assert set(queues) == {"default", "spark"}
    services = compose()["services"]
    assert {"postgres", "db-upgrade", "prometheus", "statsd-exporter"} <= set(services)
    assert services["db-upgrade"]["command"] == ["db", "upgrade"]


def test_compose_schedulers_wait_for_the_schema_upgrade() -> None:
    services = compose()["services"]
    for proc in _by_role(compose_processes(), "scheduler"):
        condition = proc.raw["depends_on"]["db-upgrade"]["condition"]
        assert condition == "service_completed_successfully", proc.where
    assert services["db-upgrade"]["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("proc", compose_processes(), ids=lambda p: p.where)
def test_compose_secrets_are_attached_and_exist(proc: Process) -> None:
    declared = compose()["secrets"]
    for name in proc.raw.get("secrets", []):
        assert name in declared, f"{proc.where}: secret {name} is not declared"
        assert (COMPOSE.parent / declared[name]["file"]).is_file()
    for var, value in proc.env.items():
        if var.endswith("_CMD"):
            argv = shlex.split(value)
            secret = argv[-1].removeprefix("/run/secrets/")
            assert argv[0] == "cat", f"{proc.where}: {var}"
            assert secret in proc.raw.get("secrets", []), (
                f"{proc.where}: {var} reads {argv[-1]}, which is not a secret of this service"
            )


def test_compose_database_url_matches_the_postgres_service() -> None:
    declared = compose()["secrets"]
    url = urlsplit((COMPOSE.parent / declared["database_url"]["file"]).read_text().strip())
    password = (COMPOSE.parent / declared["postgres_password"]["file"]).read_text().strip()
    postgres = compose()["services"]["postgres"]["environment"]
    assert (url.hostname, url.port) == ("postgres", 5432)
    assert url.username == postgres["POSTGRES_USER"]
    assert url.password == password
    assert url.path == "/" + postgres["POSTGRES_DB"]


@pytest.mark.parametrize("proc", compose_processes(), ids=lambda p: p.where)
def test_compose_healthcheck_is_the_images(proc: Process) -> None:
    check = proc.raw["healthcheck"]
    if proc.role == "db":
        assert check == {"disable": True}, "a one-shot command serves no /health"
    else:
        assert check["test"] == ["CMD", "python", "/opt/tradewind/healthcheck.py"]


def test_compose_workers_list_every_scheduler_at_its_grpc_port() -> None:
    schedulers = {
        p.raw["hostname"]: p.port("grpc") for p in _by_role(compose_processes(), "scheduler")
    }
    for worker in _by_role(compose_processes(), "worker"):
        listed = dict(_split_address(a) for a in str(worker.flag("--schedulers")).split(","))
        assert listed == schedulers, f"{worker.where}: --schedulers {listed} != {schedulers}"


@pytest.mark.parametrize("proc", compose_processes(), ids=lambda p: p.where)
def test_compose_advertised_host_is_the_services_hostname(proc: Process) -> None:
    if proc.role in ("scheduler", "worker"):
        advertised = proc.env[ENV_PREFIX + "RPC__ADVERTISE_HOST"]
        assert advertised == proc.raw["hostname"] == proc.where.rpartition(" ")[2]


def test_compose_statsd_points_at_the_exporter() -> None:
    exporter = compose()["services"]["statsd-exporter"]
    udp = next(a for a in exporter["command"] if a.startswith("--statsd.listen-udp="))
    for proc in compose_processes():
        assert proc.env[ENV_PREFIX + "METRICS__STATSD_ON"] == "true", proc.where
        assert proc.env[ENV_PREFIX + "METRICS__STATSD_HOST"] == "statsd-exporter", proc.where
        assert int(proc.env[ENV_PREFIX + "METRICS__STATSD_PORT"]) == _listen_port(udp)


def _scrape_targets(config: dict[str, Any]) -> dict[str, set[tuple[str, int]]]:
    return {
        job["job_name"]: {
            _split_address(t) for sc in job.get("static_configs", []) for t in sc["targets"]
        }
        for job in config["scrape_configs"]
    }


def test_prometheus_scrapes_every_compose_process_on_its_metrics_port() -> None:
    targets = _scrape_targets(yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text()))
    for role, job in ROLE_JOBS.items():
        wanted = {
            (p.raw["hostname"], p.port("metrics")) for p in _by_role(compose_processes(), role)
        }
        assert targets[job] == wanted, f"job {job}"
    exporter = compose()["services"]["statsd-exporter"]
    web = next(a for a in exporter["command"] if a.startswith("--web.listen-address="))
    assert targets["statsd-exporter"] == {("statsd-exporter", _listen_port(web))}


def test_compose_prometheus_and_grafana_load_the_ops_files() -> None:
    services = compose()["services"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert mounts["../prometheus"] == "/etc/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS / rule_file).is_file(), rule_file
    grafana = {v.split(":")[0]: v.split(":")[1] for v in services["grafana"]["volumes"]}
    provider = yaml.safe_load((OPS / "grafana/provisioning/dashboards/tradewind.yml").read_text())
    dashboards = provider["providers"][0]["options"]["path"]
    assert grafana["../grafana/dashboard.json"].rpartition("/")[0] == dashboards
    source = yaml.safe_load((OPS / "grafana/provisioning/datasources/prometheus.yml").read_text())
    url = urlsplit(source["datasources"][0]["url"])
    assert (url.hostname, url.port) == ("prometheus", 9090)
    assert "9090:9090" in services["prometheus"]["ports"]


def test_compose_bind_mounts_exist() -> None:
    for name, svc in compose()["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: mount {source} is missing"


def test_compose_dags_use_the_queues_the_workers_serve() -> None:
    dag = runpy.run_path(str(COMPOSE.parent / "dags" / "compose_queues.py"))["dag"]
    served = {p.flag("--queues") for p in _by_role(compose_processes(), "worker")}
    assert {t.queue for t in dag.topological_sort()} == served


# ---------------------------------------------------------------- kubernetes
def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert kustomization["namespace"] == "tradewind"


def test_schedulers_are_three_replicas_under_a_budget_of_two() -> None:
    deployment = k8s_object("Deployment", "tradewind-scheduler")
    pdb = k8s_object("PodDisruptionBudget", "tradewind-scheduler")
    assert deployment["spec"]["replicas"] == 3
    assert pdb["spec"]["minAvailable"] == 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def _selects(selector: dict[str, str], obj: dict[str, Any]) -> bool:
    return selector.items() <= obj["spec"]["template"]["metadata"]["labels"].items()


def test_selectors_select_only_their_own_pods() -> None:
    workloads = [o for o in k8s_objects() if o["kind"] == "Deployment"]
    for obj in workloads:
        assert _selects(obj["spec"]["selector"]["matchLabels"], obj), obj["metadata"]["name"]
    service = k8s_object("Service", "tradewind-scheduler")
    pdb = k8s_object("PodDisruptionBudget", "tradewind-scheduler")
    for selector in (service["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
        chosen = {o["metadata"]["name"] for o in workloads if _selects(selector, o)}
        assert chosen == {"tradewind-scheduler"}, selector


def test_scheduler_service_is_headless_on_the_grpc_port() -> None:
    service = k8s_object("Service", "tradewind-scheduler")
    [port] = service["spec"]["ports"]
    [scheduler] = [p for p in k8s_processes() if p.role == "scheduler"]
    assert service["spec"]["clusterIP"] == "None", "workers must resolve every scheduler pod"
    # A headless Service does no port mapping: clients dial the pod IP at the Service's port.
    assert port["port"] == scheduler.ports[port["targetPort"]] == scheduler.port("grpc")


def test_k8s_workers_dial_the_scheduler_service() -> None:
    service = k8s_object("Service", "tradewind-scheduler")
    for worker in _by_role(k8s_processes(), "worker"):
        [address] = str(worker.flag("--schedulers")).split(",")
        host, port = _split_address(address)
        assert host == service["metadata"]["name"], worker.where
        assert port == service["spec"]["ports"][0]["port"], worker.where


def _probe_port(proc: Process, probe: dict[str, Any]) -> tuple[str, int]:
    if "grpc" in probe:
        return "grpc", int(probe["grpc"]["port"])
    get = probe["httpGet"]
    assert get["path"] == "/health", f"{proc.where}: probes must use /health"
    port = get["port"]
    return "health", proc.ports[port] if isinstance(port, str) else int(port)


@pytest.mark.parametrize("proc", k8s_processes(), ids=lambda p: p.where)
def test_k8s_ports_and_probes_match_the_configured_ports(proc: Process) -> None:
    if proc.role not in ROLE_JOBS:
        assert not proc.ports, f"{proc.where}: a one-shot command listens on nothing"
        return
    assert proc.ports == {k: proc.port(k) for k in ("grpc", "health", "metrics")}, proc.where
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert kind in proc.raw, f"{proc.where}: no {kind}"
        served, port = _probe_port(proc, proc.raw[kind])
        assert port == proc.port(served), f"{proc.where}: {kind} on {port}"


def test_k8s_scrape_annotations_name_the_metrics_port() -> None:
    for proc in k8s_processes():
        if proc.role not in ROLE_JOBS:
            continue
        [obj] = [o for o in k8s_objects() if pod_spec(o) and proc.raw in pod_spec(o)["containers"]]
        notes = obj["spec"]["template"]["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true"
        assert int(notes["prometheus.io/port"]) == proc.port("metrics") == proc.ports["metrics"]
        assert notes["prometheus.io/path"] == "/metrics"


def test_k8s_references_resolve() -> None:
    secret = k8s_object("Secret", "tradewind-secrets")
    for proc in k8s_processes():
        for var in proc.raw.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "tradewind-secrets", proc.where
                assert ref["key"] in secret["stringData"], f"{proc.where}: {ref}"
    for obj in k8s_objects():
        for volume in (pod_spec(obj) or {}).get("volumes", []):
            claim = volume.get("persistentVolumeClaim")
            if claim:
                k8s_object("PersistentVolumeClaim", claim["claimName"])


@pytest.mark.parametrize("proc", k8s_processes(), ids=lambda p: p.where)
def test_k8s_containers_are_locked_down(proc: Process) -> None:
    context = proc.raw["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in proc.raw["volumeMounts"]}
    # The root filesystem is read-only: home (logs, pgdata never used) and /tmp must be volumes.
    assert {image_env()["TRADEWIND_HOME"], "/tmp"} <= mounts, proc.where
    assert set(proc.raw["resources"]) == {"limits", "requests"}, proc.where


def test_k8s_pods_run_as_the_images_user() -> None:
    [uid] = [i.args for i in final_stage() if i.keyword == "USER"][-1:]
    for obj in k8s_objects():
        spec = pod_spec(obj)
        if spec is not None:
            context = spec["securityContext"]
            assert context["runAsNonRoot"] is True
            assert str(context["runAsUser"]) == uid.partition(":")[0], obj["metadata"]["name"]
            assert spec["automountServiceAccountToken"] is False


def test_k8s_scrape_config_maps_components_to_the_rule_jobs() -> None:
    [config] = yaml_docs(PROMETHEUS / "prometheus-kubernetes.yml")
    relabels = config["scrape_configs"][0]["relabel_configs"]
    [job_rule] = [r for r in relabels if r.get("target_label") == "job"]
    components = {
        o["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        for o in k8s_objects()
        if o["kind"] == "Deployment"
    }
    jobs = {
        re.sub(job_rule["regex"], job_rule["replacement"].replace("${1}", r"\1"), c)
        for c in components
    }
    assert jobs == set(ROLE_JOBS.values())
    keep = [r for r in relabels if r.get("action") == "keep"]
    assert any(r["regex"] == "metrics" for r in keep), "one target per pod: the metrics port"
