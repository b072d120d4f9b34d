"""deploy/docker and deploy/compose.yaml: hadolint passes the Dockerfiles, the CPU image installs
with `make setup`'s own script and pins, and compose.yaml is a valid Compose file whose files exist."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.monitoring import DEPLOY

ROOT = DEPLOY.parent
DOCKERFILES = {"cpu": DEPLOY / "docker" / "Dockerfile.cpu", "gpu": DEPLOY / "docker" / "Dockerfile.gpu"}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", "\n".join(ln for ln in dockerfile.read_text().splitlines() if not ln.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("device", DOCKERFILES)
def test_dockerfiles_pass_hadolint(device):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    run = subprocess.run([hadolint, "--no-color", str(DOCKERFILES[device])], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("device", DOCKERFILES)
def test_images_run_tuneserve_serve_as_a_non_root_user_with_a_health_check(device):
    steps = dict(instructions(DOCKERFILES[device]))  # the last of each kind
    assert json.loads(steps["ENTRYPOINT"]) == ["tuneserve", "serve"]
    assert re.fullmatch(r"\d+:\d+", steps["USER"])  # numeric: Kubernetes' runAsNonRoot can check it
    assert "/health" in steps["HEALTHCHECK"] and "--start-period=" in steps["HEALTHCHECK"]
    assert "TUNESERVE_HOME=/data" in steps["ENV"] and json.loads(steps["VOLUME"]) == ["/data"]


def test_the_cpu_image_installs_with_make_setups_script_and_pins(tmp_path):
    """Both run requirements/install-cpu.sh; a stand-in python records the pip commands each way."""
    makefile = (ROOT / "Makefile").read_text()
    stamp_rule = makefile[makefile.index("$(STAMP):"):makefile.index("quantize-env:")]
    assert "requirements/install-cpu.sh $(BIN)/python" in stamp_rule
    assert "requirements/cpu.txt" in stamp_rule.splitlines()[0] and "requirements/install-cpu.sh" in stamp_rule.splitlines()[0]
    steps = instructions(DOCKERFILES["cpu"])
    assert ("COPY", "requirements/ requirements/") in steps
    run_line = next(args for kind, args in steps if kind == "RUN" and "install-cpu.sh" in args)
    words = shlex.split(run_line)
    env = dict(w.split("=", 1) for w in words[:words.index("requirements/install-cpu.sh")])
    image_args = words[words.index("requirements/install-cpu.sh") + 1:]

    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/pip.log\n')
    python.chmod(0o755)

    def pip_commands(args, extra_env):
        (tmp_path / "pip.log").write_text("")
        clean = {k: v for k, v in os.environ.items() if k not in ("TORCH_INDEX_URL", "EDITABLE")}
        subprocess.run(["sh", "requirements/install-cpu.sh", str(python), *args[1:]], cwd=ROOT, check=True, env=clean | extra_env)
        return (tmp_path / "pip.log").read_text().splitlines()

    setup = pip_commands([str(python)], {})
    image = pip_commands(image_args, env)
    torch_pin = next(ln for ln in (ROOT / "requirements" / "cpu.txt").read_text().splitlines() if ln.startswith("torch=="))
    assert f"-m pip install -q {torch_pin} --index-url https://download.pytorch.org/whl/cpu" in image
    assert f"-m pip install -q {torch_pin.removesuffix('+cpu')}" in setup  # the CPU wheel on disk here
    assert "-m pip install -q -c requirements/cpu.txt -e .[cpu,all]" in setup
    assert "-m pip install -q -c requirements/cpu.txt .[cpu,serve]" in image
    assert setup[-2:] == image[-2:]  # the same clean-up and default-model package


def test_the_docker_build_context_holds_what_the_dockerfiles_copy_and_nothing_heavy():
    patterns = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert patterns[0] == "*"  # everything is out unless let in below
    let_in = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    for dockerfile in DOCKERFILES.values():
        for kind, args in instructions(dockerfile):
            if kind == "COPY":
                for source in args.split()[:-1]:
                    assert source.rstrip("/") in let_in, f"{dockerfile.name}: COPY {source} is excluded by .dockerignore"
                    assert (ROOT / source).exists()
    assert not let_in & {".venv", ".venv-quantize", "runs", ".git", "docs"}


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_file_is_valid_compose():
    from compose_spec import PyCompose

    text = (DEPLOY / "compose.yaml").read_text()
    # YAML merge keys (<<) are resolved by the YAML parser, as docker compose does.
    services = PyCompose.from_json(json.dumps(yaml.safe_load(text))).service_names()
    assert set(services) == {"tuneserve-cpu", "tuneserve-gpu", "tuneserve-replica-0", "tuneserve-replica-1", "router",
                             "prometheus", "grafana"}
    with pytest.raises(ValueError, match="stop_grace_perod"):
        PyCompose.from_json(json.dumps(yaml.safe_load(text.replace("stop_grace_period", "stop_grace_perod"))))


def test_compose_serves_the_cpu_image_by_default_and_wires_monitoring():
    spec = compose()
    services = spec["services"]
    assert "COMPOSE_PROFILES=cpu" in (DEPLOY / ".env").read_text().splitlines()
    assert services["tuneserve-cpu"]["profiles"] == ["cpu"] and services["tuneserve-gpu"]["profiles"] == ["gpu"]
    gpu = services["tuneserve-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    for name in ("tuneserve-cpu", "tuneserve-gpu"):
        service = services[name]
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        command = service["command"]
        port = command[command.index("--port") + 1]
        assert service["networks"]["default"]["aliases"] == ["tuneserve"]
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            assert source in spec["volumes"] or (DEPLOY / source).exists(), volume
        adapters_file = command[command.index("--adapters-file") + 1]
        assert any(v.split(":")[1] == adapters_file for v in service["volumes"])
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    scrape = {job["job_name"]: job["dns_sd_configs"][0] for job in prometheus["scrape_configs"]}
    assert scrape["tuneserve"]["names"] == ["tuneserve"] and scrape["tuneserve"]["port"] == int(port)
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert (DEPLOY / "grafana" / "provisioning" / "dashboards").is_dir() and mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "tuneserve.yml").read_text())
    assert mounts["./grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "prometheus"  # the uid every panel names


def test_the_replicas_profile_puts_the_router_alone_on_the_port_in_front_of_every_replica():
    from vllm_router.launch_router import parse_router_args

    spec = compose()
    services = spec["services"]
    replicas = [name for name, s in services.items() if s.get("profiles") == ["replicas"] and name != "router"]
    router = services["router"]
    assert router["profiles"] == ["replicas"] and router["ports"] == ["127.0.0.1:8000:8000"]
    command = router["command"]
    urls = command[command.index("--worker-urls") + 1: command.index("--policy")]
    assert urls == [f"http://{services[r]['networks']['default']['aliases'][1]}:8000" for r in replicas]
    for name in replicas:
        service = services[name]
        assert service["ports"] == [] and "tuneserve" in service["networks"]["default"]["aliases"]
        assert service["command"][service["command"].index("--port") + 1] == "8000"
    assert sorted(services[r]["cpuset"] for r in replicas) == ["0", "1"]  # a core each, as serve --replicas does
    args = parse_router_args(command)  # vllm-router's own parser: an unknown flag or value exits
    assert args.worker_urls == urls and args.policy == "cache_aware"
    with pytest.raises(SystemExit):
        parse_router_args([*command, "--balance-abs-treshold", "8"])
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    router_job = next(job for job in prometheus["scrape_configs"] if job["job_name"] == "vllm-router")
    assert router_job["dns_sd_configs"][0]["port"] == int(command[command.index("--prometheus-port") + 1])
