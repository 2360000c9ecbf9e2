"""The deployment files agree with each other and with the server (issue 19, item 4); docker and kubectl are not
available here, so this checks what can be checked without them: HAProxy accepts its file, the YAML parses, every
worker has its own GPU and node name, the balancer's addresses name the workers, and the flags exist."""

from __future__ import annotations

import re
import subprocess

import yaml

from metis_rt.server.main import build_parser

from .conftest import REPO_DIR
from .realparts import HAPROXY

DEPLOY = REPO_DIR / "deploy"


def worker_servers() -> list[str]:
    """The environment variables of haproxy.cfg's worker lines, in order."""
    text = (DEPLOY / "haproxy.cfg").read_text()
    return re.findall(r'^\s*server \w+ "\$\{(METIS_WORKER\d+)-', text, flags=re.MULTILINE)


def test_haproxy_accepts_the_shipped_file_with_loopback_workers():
    env = {"METIS_WORKER0": "127.0.0.1:1", "METIS_WORKER1": "127.0.0.1:2", "PATH": "/usr/bin:/bin"}
    check = subprocess.run([HAPROXY, "-c", "-f", str(DEPLOY / "haproxy.cfg")], env=env, capture_output=True, text=True)
    assert check.returncode == 0 and "WARNING" not in check.stderr + check.stdout, check.stderr + check.stdout
    assert worker_servers() == ["METIS_WORKER0", "METIS_WORKER1"]


def test_compose_runs_a_worker_per_gpu_behind_the_balancer():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    workers = {name: s for name, s in services.items() if name.startswith("worker-")}
    gpus = [s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for s in workers.values()]
    assert sorted(gpus) == [["0"], ["1"]]
    nodes = [next(a for a in s["command"] if a.startswith("--mqtt-node=")) for s in workers.values()]
    assert len(set(nodes)) == len(workers)  # one MQTT node (status topic, last will) per worker
    env = services["haproxy"]["environment"]
    assert sorted(env) == worker_servers()
    assert sorted(v.split(":")[0] for v in env.values()) == sorted(workers)
    parser = build_parser()
    for worker in workers.values():
        args = parser.parse_args([a.replace("${METIS_PUBLIC_HOST:-localhost}", "localhost") for a in worker["command"]])
        # every worker signs and opens resume tokens with the one shared key (a stream moves between them)
        assert str(args.resume_key_file) == "/run/secrets/metis_resume_key", args.resume_key_file
        assert "metis_resume_key" in worker["secrets"] and "metis_resume_key" in compose["secrets"]


def test_kubernetes_workers_and_balancer_agree():
    docs = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(f"k8s/{p.name}" for p in (DEPLOY / "k8s").glob("*.yaml"))
    workers = docs[("StatefulSet", "metis-worker")]
    pod = workers["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    service = docs[("Service", workers["spec"]["serviceName"])]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    balancer = docs[("Deployment", "metis-haproxy")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in balancer["env"]}
    assert sorted(env) == worker_servers()
    namespace = kustomization["namespace"]
    expected = {f"metis-worker-{i}.metis-worker.{namespace}.svc.cluster.local:8765" for i in range(len(env))}
    assert set(env.values()) == expected and workers["spec"]["replicas"] == len(env)
    args = build_parser().parse_args(
        [a.replace("$(METIS_PUBLIC_HOST)", "x").replace("$(POD_NAME)", "p") for a in container["args"]]
    )
    # the shared resume key comes from the secret mounted at /secrets, which the kustomization fills
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert args.resume_key_file.parent.as_posix() == mounts["secrets"]
    files = [f.split("=")[0] for g in kustomization["secretGenerator"] for f in g["files"]]
    assert args.resume_key_file.name in files
