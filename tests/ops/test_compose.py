"""compose.yaml and the Dockerfile, checked without a Docker engine: the file parses, the stack
has every service the product needs, `--scale worker=N` can work, health checks back every
`service_healthy` wait, every mounted file exists, and the services agree with each other
(nginx's template variables, the body cap, Prometheus's discovery names and ports, the
Grafana datasource uid, WAHA's webhook settings)."""

from __future__ import annotations

import importlib
import json
import re
from typing import Any

import pytest
import yaml

from tests.ops.render import PROMETHEUS_CONFIG, REPO
from wsm.edge import TEMPLATE as NGINX_TEMPLATE
from wsm.edge import template_variables

COMPOSE = REPO / "compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
SERVICES = {"nginx", "gateway", "worker", "api", "redis", "prometheus", "grafana", "waha"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text("utf-8"))
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def dockerignore_patterns() -> set[str]:
    lines = DOCKERIGNORE.read_text("utf-8").splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_every_service_is_there(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= SERVICES


def test_worker_can_be_scaled(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "ports" not in worker
    assert "container_name" not in worker
    assert "9091" in command_of(worker)


def test_no_service_has_a_container_name(services: dict[str, dict[str, Any]]) -> None:
    assert [name for name, service in services.items() if "container_name" in service] == []


def test_only_nginx_and_grafana_publish_ports(services: dict[str, dict[str, Any]]) -> None:
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"nginx", "grafana"}
    grafana_ports = services["grafana"]["ports"]
    assert all(str(port).startswith("127.0.0.1:") for port in grafana_ports), (
        "Grafana is for local viewing: bind it to the host's loopback"
    )


def test_services_waited_on_as_healthy_have_a_health_check(
    services: dict[str, dict[str, Any]],
) -> None:
    waited_on = set()
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            if spec.get("condition") == "service_healthy":
                waited_on.add(target)
    assert waited_on >= {"redis", "gateway"}
    for target in waited_on:
        assert "healthcheck" in services[target], f"{target} is waited on but has no healthcheck"
        assert services[target]["healthcheck"]["test"], target


def test_every_mounted_file_exists(services: dict[str, dict[str, Any]]) -> None:
    mounted = 0
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if source.startswith((".", "/")):
                path = (REPO / source).resolve()
                assert path.exists(), f"{name} mounts {source}, which is not in the repository"
                assert REPO in path.parents, f"{name} mounts {source} from outside the repository"
                mounted += 1
    assert mounted >= 5


def test_named_volumes_are_declared(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose.get("volumes", {}))
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, source


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service["image"]
        if "build" in service:
            continue
        tag = image.rpartition(":")[2] if ":" in image else ""
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"


def test_one_image_for_gateway_worker_and_api(services: dict[str, dict[str, Any]]) -> None:
    images = {services[name]["image"] for name in ("gateway", "worker", "api")}
    assert len(images) == 1
    assert [command_of(services[name])[0] for name in ("gateway", "worker", "api")] == [
        "gateway",
        "worker",
        "api",
    ]


def test_redis_is_durable(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    command = command_of(redis)
    assert option(command, "--appendonly") == "yes"
    assert option(command, "--maxmemory-policy") == "noeviction"
    # A limit, or Redis grows until the OOM killer ends it (tests/ops/test_redis_memory.py runs
    # this command on a real redis-server).
    assert option(command, "--maxmemory") == "${REDIS_MAXMEMORY:-1gb}"
    assert any(str(volume).endswith(":/data") for volume in redis["volumes"])
    assert "healthcheck" in redis


def test_secrets_come_from_the_env_file(services: dict[str, dict[str, Any]]) -> None:
    """Secrets are interpolated from .env (required ones with :?), never written here."""
    secrets = {
        "WEBHOOK_HMAC_KEY",
        "WAHA_API_KEY",
        "WHATSAPP_HOOK_HMAC_KEY",
        "WSM_API_TOKEN",
        "GF_SECURITY_ADMIN_PASSWORD",
    }
    seen = set()
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if key in secrets:
                seen.add(key)
                assert isinstance(value, str) and re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", value), (
                    f"{name}.{key} must be ${{NAME:?message}} from .env"
                )
    assert seen == secrets


def test_nginx_gets_every_template_variable(services: dict[str, dict[str, Any]]) -> None:
    nginx = services["nginx"]
    environment = nginx["environment"]
    assert set(template_variables(NGINX_TEMPLATE.read_text("utf-8"))) <= set(environment)
    assert environment["NGINX_ENVSUBST_FILTER"] == "^NGINX_"
    assert environment["NGINX_RESOLVER"] == "127.0.0.11"
    assert any(":/etc/nginx/templates" in volume for volume in nginx["volumes"])


def test_nginx_body_cap_equals_the_gateways(services: dict[str, dict[str, Any]]) -> None:
    size = services["nginx"]["environment"]["NGINX_CLIENT_MAX_BODY_SIZE"]
    match = re.fullmatch(r"(\d+)([km]?)", size)
    assert match
    nginx_bytes = int(match.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2)]
    gateway_bytes = int(services["gateway"]["environment"]["WSM_MAX_BODY_BYTES"])
    assert nginx_bytes == gateway_bytes == 1024 * 1024


def test_nginx_upstreams_match_the_services(services: dict[str, dict[str, Any]]) -> None:
    environment = services["nginx"]["environment"]
    gateway = command_of(services["gateway"])
    api = command_of(services["api"])
    assert environment["NGINX_GATEWAY_UPSTREAM"] == f"gateway:{option(gateway, '--port')}"
    assert environment["NGINX_API_UPSTREAM"] == f"api:{option(api, '--port')}"


def test_prometheus_discovers_every_replica_by_service_name(
    services: dict[str, dict[str, Any]],
) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text("utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    expected_ports = {
        "gateway": int(option(command_of(services["gateway"]), "--port")),
        "worker": int(option(command_of(services["worker"]), "--metrics-port")),
        "api": int(option(command_of(services["api"]), "--port")),
    }
    for name, port in expected_ports.items():
        sd = jobs[name]["dns_sd_configs"]
        assert sd == [{"names": [name], "type": "A", "port": port, "refresh_interval": "15s"}], name
        assert "static_configs" not in jobs[name], f"{name}: a static target hides replicas"


def test_prometheus_mounts_its_config_and_rules(services: dict[str, dict[str, Any]]) -> None:
    volumes = services["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes
    assert "./prometheus/rules:/etc/prometheus/rules:ro" in volumes
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text("utf-8"))
    assert config["rule_files"] == ["rules/*.yml"]


def test_grafana_datasource_and_dashboards_agree() -> None:
    datasources = yaml.safe_load(
        (REPO / "grafana/provisioning/datasources/prometheus.yaml").read_text("utf-8")
    )["datasources"]
    assert [(d["uid"], d["url"]) for d in datasources] == [
        ("wsm-prometheus", "http://prometheus:9090")
    ]
    provider = yaml.safe_load(
        (REPO / "grafana/provisioning/dashboards/wsm.yaml").read_text("utf-8")
    )["providers"][0]
    assert provider["options"]["path"] == "/etc/grafana/dashboards"
    for path in (REPO / "grafana/dashboards").glob("*.json"):
        dashboard = json.loads(path.read_text("utf-8"))
        for panel in dashboard["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "wsm-prometheus", panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "wsm-prometheus", panel["title"]


def test_waha_posts_signed_webhooks_to_nginx_with_exponential_retries(
    services: dict[str, dict[str, Any]],
) -> None:
    waha = services["waha"]
    assert waha["image"].startswith("devlikeapro/waha:")
    environment = waha["environment"]
    assert environment["WHATSAPP_HOOK_URL"] == "http://nginx/webhook"
    assert environment["WHATSAPP_HOOK_RETRIES_POLICY"] == "exponential"
    # The same secret, from the same .env variable, as the gateway's key.
    hmac_variable = re.match(r"\$\{(\w+)", environment["WHATSAPP_HOOK_HMAC_KEY"])
    gateway_variable = re.match(
        r"\$\{(\w+)", services["gateway"]["environment"]["WEBHOOK_HMAC_KEY"]
    )
    assert hmac_variable and gateway_variable
    assert hmac_variable.group(1) == gateway_variable.group(1)
    events_default = re.fullmatch(r"\$\{\w+:-([^}]*)\}", environment["WHATSAPP_HOOK_EVENTS"])
    assert events_default
    events = events_default.group(1).split(",")
    assert all(event == event.strip() and event for event in events), "WAHA splits on ',' only"
    assert ("message" in events) != ("message.any" in events), "message or message.any, not both"
    assert "session.status" in events


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    text = DOCKERFILE.read_text("utf-8")
    stages = re.findall(
        r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.MULTILINE | re.IGNORECASE
    )
    assert len(stages) >= 2
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, flags=re.MULTILINE)
    assert base and re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*", base.group(1))
    user = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert user and user[-1].split(":")[0] not in {"root", "0"}
    assert re.search(r'^ENTRYPOINT \["wsm"\]', text, flags=re.MULTILINE)


def test_dockerfile_copies_every_package_and_ignores_secrets() -> None:
    text = DOCKERFILE.read_text("utf-8")
    copied = {
        source
        for sources in re.findall(r"^COPY (?!--from)(.+?)\s+\S+$", text, flags=re.MULTILINE)
        for source in sources.split()
    }
    pyproject = (REPO / "pyproject.toml").read_text("utf-8")
    include = re.search(r"include = \[(.*?)\]", pyproject)
    assert include
    packages = {name.strip().strip('"').rstrip("*") for name in include.group(1).split(",")}
    assert packages <= copied, packages - copied
    for source in copied:
        assert (REPO / source).exists(), source
    ignored = dockerignore_patterns()
    assert ".env" in ignored
    assert not (copied & set(ignored)), "a COPY source is excluded by .dockerignore"


def test_dockerfile_ports_match_compose(services: dict[str, dict[str, Any]]) -> None:
    exposed = set(
        re.findall(r"^EXPOSE (.+)$", DOCKERFILE.read_text("utf-8"), flags=re.MULTILINE)[0].split()
    )
    assert {
        option(command_of(services["gateway"]), "--port"),
        option(command_of(services["api"]), "--port"),
        option(command_of(services["worker"]), "--metrics-port"),
    } <= exposed


def test_compose_mentions_no_path_outside_the_repository() -> None:
    for match in re.finditer(r"\./[\w./-]+", COMPOSE.read_text("utf-8")):
        if match.group(0) == "./wsm.env":
            continue  # the optional env_file: an operator's own, absent from the repository
        assert (REPO / match.group(0)).exists(), match.group(0)


def test_dockerignore_keeps_what_pip_install_reads() -> None:
    ignored = dockerignore_patterns()
    assert not {"pyproject.toml", "README.md", "shared", "wsm"} & ignored


def test_compose_has_no_fixed_secret_values(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"(KEY|TOKEN|PASSWORD|SECRET)$", key) and value is not None:
                assert str(value).startswith("${"), f"{name}.{key} is written in compose.yaml"


def test_the_worker_runs_an_importable_handler(services: dict[str, dict[str, Any]]) -> None:
    value = services["worker"]["environment"]["WSM_WORKER_HANDLER"]
    default = re.fullmatch(r"\$\{WSM_WORKER_HANDLER:-([\w.]+):(\w+)\}", value)
    assert default, value
    module = importlib.import_module(default.group(1))
    assert callable(getattr(module, default.group(2)))


def test_the_products_settings_reach_gateway_worker_and_api(
    services: dict[str, dict[str, Any]],
) -> None:
    """Settings beyond compose's own come from an optional wsm.env (never .env, which holds
    every service's Redis password), and the business's files from config/, read-only."""
    for name in ("gateway", "worker", "api"):
        assert services[name]["env_file"] == [{"path": "./wsm.env", "required": False}], name
    for name in ("worker", "api"):
        assert "./config:/etc/wsm:ro" in services[name]["volumes"], name
    for ignored in (".gitignore", ".dockerignore"):
        assert "wsm.env" in (REPO / ignored).read_text().replace("/", "\n").split(), ignored


def test_the_replay_window_outlasts_wahas_retries(services: dict[str, dict[str, Any]]) -> None:
    """WAHA's last retry comes 2 × (2 + 4 + … + 2^attempts) s after the event, plus up to 20%
    jitter: the gateway must not answer it `stale` (a customer's message would be lost)."""
    waha = services["waha"]["environment"]
    delay = int(waha["WHATSAPP_HOOK_RETRIES_DELAY_SECONDS"])
    attempts = int(waha["WHATSAPP_HOOK_RETRIES_ATTEMPTS"])
    last_retry = sum(delay * 2**n for n in range(1, attempts + 1)) * 1.2
    window = services["gateway"]["environment"]["WSM_WEBHOOK_MAX_AGE_SECONDS"]
    found = re.fullmatch(r"\$\{WSM_WEBHOOK_MAX_AGE_SECONDS:-(\d+)\}", window)
    assert found and int(found[1]) > last_retry, (window, last_retry)
    # A file stays at WAHA until a worker fetched it, past its 180 s default.
    assert re.fullmatch(r"\$\{WAHA_FILES_LIFETIME:-(\d+)\}", waha["WHATSAPP_FILES_LIFETIME"])
    assert int(waha["WHATSAPP_FILES_LIFETIME"].split("-")[1].rstrip("}")) >= last_retry
