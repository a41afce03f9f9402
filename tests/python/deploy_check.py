"""Offline checks of the deployment files (deploy/), run by tests/tests/deploy.rs.

usage: deploy_check.py ROOT CLOUD_HELP EDGE_HELP METRICS RENDERED.yaml [RENDERED.yaml ...]
  ROOT          the repository root
  CLOUD_HELP    `cloud-expert serve --help` output (the environment variables it reads)
  EDGE_HELP     `edge-client serve --help` and `run --help` output
  METRICS       a live server's /metrics text
  RENDERED      kustomize output of the base and each overlay

1. Every manifest validates against the Kubernetes 1.37 schema, strictly (kubernetes-validate).
2. The manifests, the Compose file and the Dockerfiles only set environment variables the
   binaries read, and the HPA's custom metric is one the server exports.
3. Probes, grace periods, the headless Service, the PDB and the GPU option are as documented.
4. The Compose file: services, health-gated start, Prometheus scraping the cloud.
"""
import pathlib
import re
import subprocess
import sys

import yaml

root = pathlib.Path(sys.argv[1])
cloud_help = pathlib.Path(sys.argv[2]).read_text()
edge_help = pathlib.Path(sys.argv[3]).read_text()
metrics = pathlib.Path(sys.argv[4]).read_text()
rendered = [pathlib.Path(p) for p in sys.argv[5:]]
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


cloud_env = set(re.findall(r"env: (CLOUD_EXPERT_[A-Z0-9_]+|OFFLOAD_[A-Z_]+)", cloud_help))
edge_env = set(re.findall(r"env: (EDGE_[A-Z0-9_]+)", edge_help))
check(len(cloud_env) > 20 and len(edge_env) > 15, f"help texts list too few variables: {len(cloud_env)}, {len(edge_env)}")
exported = set(re.findall(r"^# TYPE (\w+) ", metrics, re.M))


def known_env(name):
    return name in cloud_env or name in edge_env or name in ("OMP_WAIT_POLICY",)


# 1. Schema validation of everything Kubernetes will receive.
extra = [root / "deploy/kubernetes/prometheus-adapter-rules.yaml"]
r = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet",
                    *map(str, rendered + extra)], capture_output=True, text=True)
check(r.returncode == 0, f"kubernetes-validate: {r.stdout}{r.stderr}")

docs = {}
for path in rendered:
    docs[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d]

for name, objs in docs.items():
    by_kind = {o["kind"]: o for o in objs}
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "PersistentVolumeClaim"):
        check(kind in by_kind, f"{name}: no {kind}")
    dep = by_kind["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    # 2. Only variables the server reads.
    for var in env:
        check(known_env(var), f"{name}: the server does not read {var}")
    # 3. Native gRPC probes on the plaintext health listener.
    health_port = int(env["CLOUD_EXPERT_HEALTH_ADDR"].rsplit(":", 1)[1])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check(c.get(probe, {}).get("grpc", {}).get("port") == health_port,
              f"{name}: {probe} is not a gRPC probe on the health port {health_port}")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports.get("grpc") == int(env["CLOUD_EXPERT_ADDR"].rsplit(":", 1)[1]), f"{name}: grpc port differs from CLOUD_EXPERT_ADDR")
    check(ports.get("http") == int(env["CLOUD_EXPERT_HTTP_ADDR"].rsplit(":", 1)[1]), f"{name}: http port differs")
    # SIGTERM: the preStop pause plus the server's drain fit in the grace period.
    drain = float(env["CLOUD_EXPERT_GRACE_SECS"])
    pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    check(pause + drain < pod["terminationGracePeriodSeconds"],
          f"{name}: preStop {pause}s + drain {drain}s does not fit the grace period")
    # TLS and credentials from Secrets; the model repository from a read-only volume.
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    check("secret" in vols["tls"], f"{name}: TLS is not from a Secret")
    for var in ("CLOUD_EXPERT_TLS_CERT", "CLOUD_EXPERT_TLS_KEY", "CLOUD_EXPERT_TLS_CLIENT_CA"):
        check(any(env[var].startswith(m) for m in mounts if mounts[m]["name"] == "tls"), f"{name}: {var} is not on the TLS Secret")
    check(mounts[env["OFFLOAD_REPO"]]["readOnly"] and "persistentVolumeClaim" in vols["models"],
          f"{name}: the model repository is not a read-only volume")
    check(pod["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"], f"{name}: not hardened")
    res = c["resources"]
    check(all(k in res.get(s, {}) for s in ("requests", "limits") for k in ("cpu", "memory")), f"{name}: requests/limits missing")
    # Headless Service for client-side balancing, on the gRPC port.
    svcs = [o for o in objs if o["kind"] == "Service"]
    grpc_svc = [s for s in svcs if s["spec"].get("clusterIP") == "None"]
    check(len(grpc_svc) == 1 and grpc_svc[0]["spec"]["ports"][0]["targetPort"] == "grpc", f"{name}: no headless gRPC Service")
    # HPA on CPU and on a metric the server exports.
    hpa = by_kind["HorizontalPodAutoscaler"]
    kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
    check(kinds.get("Resource", {}).get("resource", {}).get("name") == "cpu", f"{name}: HPA does not scale on CPU")
    custom = kinds.get("Pods", {}).get("pods", {}).get("metric", {}).get("name")
    check(custom in exported, f"{name}: HPA metric {custom} is not exported by the server (has {sorted(exported)[:5]}...)")
    check(by_kind["PodDisruptionBudget"]["spec"]["selector"] == dep["spec"]["selector"], f"{name}: PDB selects other pods")
    gpu = "nvidia.com/gpu" in res.get("limits", {})
    check(gpu == ("gpu" in name), f"{name}: GPU request {'present' if gpu else 'missing'}")
    if gpu:
        check(pod.get("nodeSelector") and pod.get("tolerations"), f"{name}: GPU pods not steered to GPU nodes")
        check(c["image"].endswith(":cuda"), f"{name}: GPU overlay does not use the CUDA image")

# 4. Compose.
compose = yaml.safe_load((root / "deploy/compose/compose.yaml").read_text())
services = compose["services"]
edges = [s for s in services if s.startswith("edge-")]
check(len(edges) >= 3, "compose: fewer than three simulated edge clients")
check({"cloud", "prometheus", "bootstrap"} <= set(services), "compose: cloud, prometheus or bootstrap missing")
for s in edges:
    check(services[s]["depends_on"]["cloud"]["condition"] == "service_healthy", f"compose: {s} does not wait for a healthy cloud")
for s, svc in services.items():
    for var in (svc.get("environment") or {}):
        check(known_env(var), f"compose: {s} sets {var}, which nothing reads")
prom = yaml.safe_load((root / "deploy/compose/prometheus.yml").read_text())
targets = [t for j in prom["scrape_configs"] for sc in j["static_configs"] for t in sc["targets"]]
check("cloud:8000" in targets, "compose: Prometheus does not scrape the cloud")
alerts = yaml.safe_load((root / "deploy/monitoring/alerts.yml").read_text())
for g in alerts["groups"]:
    for rule in g["rules"]:
        for m in re.findall(r"\b((?:cloud|fleet)_[a-z_]+?)(?:_bucket)?\b", rule["expr"]):
            check(m in exported, f"alerts: {rule['alert']} uses {m}, which the server does not export")

# 2. Dockerfiles: the variables they set.
for df in ("deploy/cloud-expert/Dockerfile", "deploy/edge-client/Dockerfile"):
    text = (root / df).read_text()
    for var in re.findall(r"\b((?:CLOUD_EXPERT|EDGE|OFFLOAD)_[A-Z_]+)=", text):
        check(known_env(var), f"{df}: sets {var}, which nothing reads")

if failures:
    print("\n".join(failures))
    sys.exit(1)
print(f"{len(rendered)} renderings, compose with {len(services)} services, {len(exported)} exported metrics: all checks passed")
