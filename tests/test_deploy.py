"""The packaging files (Dockerfile, compose.yaml, deploy/systemd, deploy/k8s) parse, and
agree with the code and with each other: every command line they run is accepted by the
real `interest` parsers, the partition counts and addresses match, the config they mount
loads. (No image is built here: there is no Docker engine on the test machines.)"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from interest.engine.config import load_config
from interest.tools import router, serve

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "deploy" / "systemd"
K8S = ROOT / "deploy" / "k8s"


def check_command(argv: list[str]) -> dict:
    """The options of one `interest ...` command line, parsed by the tool's own parser
    (an unknown option or a bad value fails the test)."""
    assert argv[0] in ("serve", "router", "learner"), argv
    if argv[0] == "learner":                     # its parser lives inside main()
        options = dict(zip(argv[1::2], argv[2::2]))
        assert set(options) <= {"--data", "--config", "--log-level"} and "--data" in options
        return options
    parser = serve.build_parser() if argv[0] == "serve" else router.build_parser()
    return vars(parser.parse_args(argv[1:]))


# ------------------------------------------------------------------ Dockerfile


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_dockerfile_is_multi_stage_with_the_llama_build_cached_alone():
    steps = dockerfile()
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith("AS build") and froms[1].endswith("AS runtime")
    order = [f"{w} {a}" for w, a in steps]
    llama = next(i for i, s in enumerate(order) if "llama-cpp-python" in s and s.startswith("RUN"))
    first_code = next(i for i, s in enumerate(order) if s.startswith("COPY engine"))
    constraints = next(i for i, s in enumerate(order) if s.startswith("COPY constraints.txt"))
    assert constraints < llama < first_code                   # its layer needs constraints only
    assert not any(s.startswith("COPY") for s in order[constraints + 1:llama])
    assert "-c constraints.txt" in order[llama]
    runtime = order[next(i for i, s in enumerate(order) if s.endswith("AS runtime")):]
    user = [s for s in runtime if s.startswith("USER ")]
    assert user and user[-1] not in ("USER root", "USER 0")
    assert any(s.startswith("VOLUME") and "/data" in s for s in runtime)
    health = next(s for s in runtime if s.startswith("HEALTHCHECK"))
    assert "/healthz" in health and ":7102/" in health
    cmd = next(a for w, a in steps if w == "CMD")
    options = check_command(yaml.safe_load(cmd))             # a JSON array
    assert options["http"] == "0.0.0.0:7102" and options["data"] == "/data"
    exposed = {int(p) for w, a in steps if w == "EXPOSE" for p in a.split()}
    assert exposed == {7100, 7101, 7102}
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".venv", "data", ".git"} <= set(ignored)


# -------------------------------------------------------------------- compose


def test_compose_runs_the_service_and_a_partitioned_cluster():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    single = services["interest"]
    options = check_command(single["command"])
    assert options["data"] == "/data" and single["volumes"] == ["interest-data:/data"]
    assert {p.rsplit(":", 1)[1] for p in single["ports"]} == {"7100", "7101", "7102"}
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))
    partitions = {name: check_command(s["command"]) for name, s in services.items()
                  if name.startswith("partition-")}
    assert sorted(o["partition"] for o in partitions.values()) == list(range(len(partitions)))
    assert {o["of"] for o in partitions.values()} == {len(partitions)}
    routed = check_command(services["router"]["command"])["partitions"].split(",")
    assert routed == [f"tcp://partition-{i}:{partitions[f'partition-{i}']['api'].rsplit(':', 1)[1]}"
                      for i in range(len(partitions))]
    learner = check_command(services["learner"]["command"])
    assert all(o["learner"] == "global" for o in partitions.values())
    assert {services[n]["volumes"][0] for n in (*partitions, "learner")} == \
        {f"cluster-data:{learner['--data']}"}
    assert set(compose["volumes"]) == {"interest-data", "cluster-data"}
    assert all(s["image"] == single["image"] for s in services.values())


# -------------------------------------------------------------------- systemd


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str
    parser.read_string(re.sub(r"\\\n\s*", " ", path.read_text(encoding="utf-8")))
    return parser


def exec_start(path: Path, instance: str = "0") -> list[str]:
    """ExecStart as argv after `interest`, with the unit's Environment= defaults and the
    environment files it documents (PARTITIONS) substituted."""
    service = unit(path)["Service"]
    env = dict(pair.split("=", 1) for pair in shlex.split(service.get("Environment", "")))
    env.setdefault("PARTITIONS", "4")
    line = service["ExecStart"].replace("%i", instance)
    line = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], line)
    argv = shlex.split(line)
    assert argv[0] == "/opt/interest/.venv/bin/interest"
    return argv[1:]


def test_the_systemd_units_run_accepted_command_lines():
    single = check_command(exec_start(SYSTEMD / "interest.service"))
    assert single["data"] == "/var/lib/interest"
    part = check_command(exec_start(SYSTEMD / "interest-partition@.service", "3"))
    assert part["partition"] == 3 and part["of"] == 4 and part["data"] == "/var/lib/interest"
    check_command(exec_start(SYSTEMD / "interest-router.service"))
    check_command(exec_start(SYSTEMD / "interest-learner.service"))
    for path in SYSTEMD.glob("*.service"):
        service = unit(path)["Service"]
        assert service["User"] == "interest" and service["KillSignal"] == "SIGTERM"
        assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "2"
        assert unit(path)["Install"]["WantedBy"]


def test_systemd_analyze_accepts_the_units(tmp_path):
    """Where systemd-analyze exists: no complaint but the missing /opt/interest install."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the units are only parsed")
    for path in SYSTEMD.iterdir():
        shutil.copy(path, tmp_path / path.name)
    shutil.copy(SYSTEMD / "interest-partition@.service", tmp_path / "interest-partition@0.service")
    names = [p.name for p in tmp_path.iterdir() if "@." not in p.name]
    done = subprocess.run([analyze, "verify", "--man=no", *names], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    complaints = [line for line in (done.stdout + done.stderr).splitlines()
                  if line.strip() and "/opt/interest/.venv/bin/interest is not executable"
                  not in line]
    assert complaints == []


# ----------------------------------------------------------------- Kubernetes


def manifests() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d)
    return docs


def test_the_kubernetes_manifests_agree(tmp_path):
    docs = manifests()
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs if "metadata" in d}
    kustomize = next(d for d in docs if d["kind"] == "Kustomization")
    assert sorted(kustomize["resources"]) == sorted(p.name for p in K8S.glob("*.yaml")
                                                    if p.name != "kustomization.yaml")
    toml = by_kind[("ConfigMap", "interest-config")]["data"]["cluster.toml"]
    (tmp_path / "cluster.toml").write_text(toml)
    addresses = load_config(tmp_path / "cluster.toml")["partitions"]["addresses"]
    sts = by_kind[("StatefulSet", "interest-partition")]
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    replicas = sts["spec"]["replicas"]
    assert int(env["PARTITIONS"]) == replicas == len(addresses)
    headless = by_kind[("Service", sts["spec"]["serviceName"])]
    assert headless["spec"]["clusterIP"] == "None"
    assert addresses == [f"tcp://{sts['metadata']['name']}-{i}.{headless['metadata']['name']}:7201"
                         for i in range(replicas)]
    script = container["args"][0]
    assert script.startswith("exec interest serve ")
    argv = shlex.split(script.replace('"${HOSTNAME##*-}"', "2")
                       .replace('"${PARTITIONS}"', env["PARTITIONS"]))[2:]    # exec interest
    options = check_command(argv)
    assert options["partition"] == 2 and options["api"] == "tcp://0.0.0.0:7201"
    assert options["config"] == "/etc/interest/cluster.toml"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    deployment = by_kind[("Deployment", "interest-router")]
    router_argv = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert check_command(router_argv)["config"] == "/etc/interest/cluster.toml"
    service = by_kind[("Service", "interest")]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert {p["port"] for p in service["spec"]["ports"]} == {7100, 7101}
