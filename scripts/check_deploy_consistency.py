"""Cross-checks of deploy/ that no schema covers (run by scripts/check-deploy).

- Every tokenbridge config.toml in deploy/ uses only keys that deploy/config.toml (the complete
  sample) uses, has no [tls] section (it loads files), audits to stdout, and names a policy
  file that exists and looks like a policy table.
- The rendered GKE overlays agree with their config: ports, probes, the config mount, and
  terminationGracePeriodSeconds > preStop + drain_timeout_seconds.
- The Cloud Run service agrees with its config: port, mount, drain within Cloud Run's 10 s,
  the custom audience among google.audiences.
- The workload example asks for an audience and an endpoint that tokenbridge serves.

Usage: check_deploy_consistency.py RENDERED_DIR (holding gke-dev.yaml, gke-prod.yaml and
gke-example-workload.yaml from `kubectl kustomize`).
"""

import json
import os
import re
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
ROLE_ARN = re.compile(r"^arn:[a-z-]+:iam::[0-9]{12}:role/[\w+=,.@/-]+$")
errors: list[str] = []


def err(where: object, msg: str) -> None:
    errors.append(f"{where}: {msg}")


def keys(table: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in table.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= keys(v, prefix + k + ".")
    return out


def port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def host(addr: str) -> str:
    return addr.rsplit(":", 1)[0]


def load_config(path: Path) -> dict:
    with path.open("rb") as f:
        return tomllib.load(f)


def check_configs() -> dict[Path, dict]:
    allowed = keys(load_config(DEPLOY / "config.toml"))
    configs = {}
    for path in sorted(DEPLOY.rglob("config.toml")):
        if path == DEPLOY / "config.toml":
            continue
        rel = path.relative_to(ROOT)
        cfg = load_config(path)
        configs[path] = cfg
        for k in sorted(keys(cfg) - allowed):
            err(rel, f"key `{k}` is not in deploy/config.toml (the server may refuse it)")
        if "tls" in cfg:
            err(rel, "[tls] loads certificate files: not in a ConfigMap/secret config")
        if cfg.get("audit", {}).get("sink") != "stdout":
            err(rel, 'audit.sink must be "stdout"')
        if not cfg.get("google", {}).get("audiences"):
            err(rel, "google.audiences is required")
        policy = path.parent / cfg.get("policy", {}).get("file", "")
        if not policy.is_file():
            err(rel, f"policy.file {policy} does not exist")
            continue
        bindings = tomllib.loads(policy.read_text()).get("binding", [])
        if not bindings:
            err(policy.relative_to(ROOT), "no [[binding]]")
        names = [b.get("name") for b in bindings]
        if len(set(names)) != len(names):
            err(policy.relative_to(ROOT), "binding names are not unique")
        for b in bindings:
            for sa in b.get("service_accounts", []):
                if not (sa.isdigit() or "@" in sa):
                    err(policy.relative_to(ROOT), f"{sa!r} is neither a unique ID nor an email")
            for arn in b.get("role_arns", []):
                if not ROLE_ARN.match(arn):
                    err(policy.relative_to(ROOT), f"{arn!r} is not an IAM role ARN")
    return configs


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def one(items: list[dict], kind: str) -> dict:
    found = [d for d in items if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def check_gke(rendered: Path, env: str) -> dict:
    where = f"gke/overlays/{env}"
    items = docs(rendered / f"gke-{env}.yaml")
    deploy = one(items, "Deployment")
    cm = one(items, "ConfigMap")
    cfg = tomllib.loads(cm["data"]["config.toml"])
    if "policy.toml" not in cm["data"]:
        err(where, "the ConfigMap has no policy.toml")
    pod = deploy["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    if ports.get("grpc") != port(cfg["server"]["listen"]):
        err(where, "container port grpc != server.listen")
    if ports.get("admin") != port(cfg["admin"]["listen"]) or host(cfg["admin"]["listen"]) != "0.0.0.0":
        err(where, 'admin.listen must be "0.0.0.0:<admin port>" for the probes')
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("admin", ports.get("admin")):
            err(where, f"{probe} must GET {path} on the admin port")
    config_arg = c["args"][c["args"].index("--config") + 1]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    mount = mounts.get(str(Path(config_arg).parent))
    vols = {v["name"]: v for v in pod["volumes"]}
    if not mount or vols[mount["name"]].get("configMap", {}).get("name") != cm["metadata"]["name"]:
        err(where, f"{config_arg} is not the generated ConfigMap")
    drain = cfg["server"].get("drain_timeout_seconds", 25)
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace <= pre_stop + drain:
        err(where, f"terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + drain {drain}")
    if not c["securityContext"].get("readOnlyRootFilesystem"):
        err(where, "readOnlyRootFilesystem must be true")
    return cfg


def check_cloudrun(configs: dict[Path, dict]) -> None:
    where = "cloudrun/service.yaml"
    svc = docs(DEPLOY / "cloudrun" / "service.yaml")[0]
    spec = svc["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    config_arg = c["args"][c["args"].index("--config") + 1]
    rel = Path(config_arg).relative_to("/etc/tokenbridge")
    cfg = configs[DEPLOY / "cloudrun" / rel]
    if c["ports"][0]["containerPort"] != port(cfg["server"]["listen"]):
        err(where, "containerPort != server.listen")
    if c["ports"][0]["name"] != "h2c":
        err(where, "the port must be h2c (gRPC needs HTTP/2 end to end)")
    if cfg["server"].get("drain_timeout_seconds", 25) >= 10:
        err(where, "drain_timeout_seconds must be under Cloud Run's 10 s SIGTERM-to-SIGKILL")
    if host(cfg["admin"]["listen"]) != "127.0.0.1":
        err(where, "admin.listen must stay on loopback (Cloud Run routes one port)")
    if cfg["limits"].get("per_peer_requests_per_second", 200) != 0:
        err(where, "per_peer_requests_per_second must be 0: every peer is Cloud Run's front end")
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    policy = Path(os.path.normpath(Path(config_arg).parent / cfg["policy"]["file"]))
    for needed in (Path(config_arg).parent, policy.parent):
        if str(needed) not in mounts:
            err(where, f"nothing is mounted at {needed}")
    aud = json.loads(svc["metadata"]["annotations"]["run.googleapis.com/custom-audiences"])
    if not set(aud) & set(cfg["google"]["audiences"]):
        err(where, "no custom audience is among google.audiences")


def check_example(rendered: Path, prod: dict) -> None:
    where = "gke/examples/workload"
    items = docs(rendered / "gke-example-workload.yaml")
    job = one(items, "CronJob")
    (c,) = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    if env.get("TOKENBRIDGE_AUDIENCE") not in prod["google"]["audiences"]:
        err(where, "TOKENBRIDGE_AUDIENCE is not among prod's google.audiences")
    url = urlsplit(env.get("TOKENBRIDGE_ENDPOINT", ""))
    if url.hostname != "tokenbridge.tokenbridge.svc.cluster.local" or url.port != port(prod["server"]["listen"]):
        err(where, "TOKENBRIDGE_ENDPOINT is not tokenbridge's Service")
    ns = one(items, "Namespace")
    if ns["metadata"]["labels"].get("tokenbridge.io/client") != "true":
        err(where, "the namespace lacks tokenbridge.io/client=true (tokenbridge's NetworkPolicy)")


def main() -> int:
    rendered = Path(sys.argv[1])
    configs = check_configs()
    check_gke(rendered, "dev")
    prod = check_gke(rendered, "prod")
    check_cloudrun(configs)
    check_example(rendered, prod)
    for e in errors:
        print(e)
    print(f"{len(configs)} configs, 2 overlays, Cloud Run, the example: {len(errors)} problems")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
