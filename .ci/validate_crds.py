"""Offline validation of rendered custom resources against vendored CRDs.

Usage: python3 validate_crds.py --rest REST.yaml CRD_DIR... < rendered.yaml

Reads rendered manifests on stdin. Every object of an API group that one of
the CRDs in CRD_DIR (deploy/crds/...) defines is validated against that CRD's
openAPIV3Schema, strictly: an object schema that neither lists
additionalProperties nor preserves unknown fields admits no other field (as
`kubectl apply`'s strict field validation), so a misspelt field fails. A kind
or version of such a group without a vendored schema fails too. CEL rules
(x-kubernetes-validations) and the operator's admission webhook are not run
offline; cnpg_checks() checks what matters here by hand.

Everything else is written to REST for kubernetes-validate. Prints problems
and exits 1 if any; otherwise prints the number of custom resources checked.
"""
import argparse
import pathlib
import re
import sys

import jsonschema
import yaml

OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array"},
    },
}


def strict(node):
    """A copy of an OpenAPI v3 (structural) schema as strict JSON Schema."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items()}
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        for k in ("apiVersion", "kind"):
            props.setdefault(k, {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if (out.get("type") == "object" and "properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def load_crds(dirs):
    """(group, version, kind) -> strict schema; and the set of groups."""
    schemas, groups = {}, set()
    for d in dirs:
        for f in sorted(pathlib.Path(d).glob("*.yaml")):
            for crd in yaml.safe_load_all(f.read_text()):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                spec = crd["spec"]
                groups.add(spec["group"])
                for v in spec["versions"]:
                    if not v.get("served", True):
                        continue
                    s = strict(v["schema"]["openAPIV3Schema"])
                    s["properties"]["metadata"] = OBJECT_META
                    s.setdefault("required", [])
                    s["required"] = sorted(set(s["required"]) | {"apiVersion", "kind", "metadata"})
                    schemas[(spec["group"], v["name"], spec["names"]["kind"])] = s
    return schemas, groups


def where(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def schema_errors(doc, schemas, groups):
    group, _, version = doc.get("apiVersion", "").rpartition("/")
    if group not in groups:
        return None  # not ours: kubernetes-validate's
    schema = schemas.get((group, version, doc.get("kind")))
    if schema is None:
        return [f"{where(doc)}: no vendored schema for {doc.get('apiVersion')} {doc.get('kind')}"]
    v = jsonschema.Draft7Validator(schema)
    out = []
    for e in sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        best = jsonschema.exceptions.best_match([e])
        path = ".".join(str(p) for p in best.absolute_path) or "(root)"
        out.append(f"{where(doc)}: {path}: {best.message}")
    return out


# --- what the component must guarantee (deploy/README.md §10) -----------------
URL = re.compile(r"^postgres(?:ql)?://\$\((?P<user>\w+)\):\$\((?P<password>\w+)\)@(?P<host>[^:/?]+)(?::(?P<port>\d+))?/(?P<db>\w+)(?:\?(?P<query>.*))?$")


def containers(doc):
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    return spec.get("template", {}).get("spec", {}).get("containers", []) if "template" in spec else []


def cnpg_checks(docs):
    errors = []
    err = lambda d, m: errors.append(f"{where(d)}: {m}")
    kinds = {}
    for d in docs:
        kinds.setdefault(d.get("kind"), []).append(d)
    clusters = {c["metadata"]["name"]: c for c in kinds.get("Cluster", [])
                if c["apiVersion"].startswith("postgresql.cnpg.io/")}
    if not clusters:
        return errors
    stores = {o["metadata"]["name"] for o in kinds.get("ObjectStore", [])}
    roles = {}  # (cluster, role) -> password Secret
    for r in kinds.get("DatabaseRole", []):
        c = r["spec"]["cluster"].get("name")
        if c not in clusters:
            err(r, f"cluster {c!r} is not rendered")
        if r["spec"].get("login") and not r["spec"].get("passwordSecret", {}).get("name"):
            err(r, "a login role needs passwordSecret (no password may be written here)")
        roles[(c, r["spec"]["name"])] = r["spec"].get("passwordSecret", {}).get("name")
    dbs = {}  # (cluster, database) -> (owner, Secret with the owner's credentials)
    for name, c in clusters.items():
        spec = c["spec"]
        init = spec.get("bootstrap", {}).get("initdb")
        if init:
            db = init.get("database", "app")
            dbs[(name, db)] = (init.get("owner", db), init.get("secret", {}).get("name", f"{name}-app"))
        n = spec.get("instances", 1)
        sync = spec.get("postgresql", {}).get("synchronous")
        if n < 3:
            err(c, f"instances {n}: three are needed (a primary and two standbys, one of them synchronous)")
        if not sync:
            err(c, "spec.postgresql.synchronous is required: a commit is acknowledged only once a standby has it")
        else:
            if not 1 <= sync.get("number", 0) <= n - 1:
                err(c, f"synchronous.number {sync.get('number')} must be between 1 and instances - 1 ({n - 1})")
            if sync.get("dataDurability", "required") != "required":
                err(c, "synchronous.dataDurability must be required (preferred acknowledges commits on the primary alone)")
        if "minSyncReplicas" in spec or "maxSyncReplicas" in spec:
            err(c, "minSyncReplicas/maxSyncReplicas are the deprecated form; use spec.postgresql.synchronous only")
        if spec.get("enablePDB") is False:
            err(c, "enablePDB must not be false: the operator's PodDisruptionBudgets keep the primary through drains")
        if spec.get("enableSuperuserAccess"):
            err(c, "enableSuperuserAccess: no superuser over the network")
        image = spec.get("imageName", "")
        if "imageCatalogRef" in spec and image:
            err(c, "imageName and imageCatalogRef are mutually exclusive")
        if "imageCatalogRef" not in spec and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
            err(c, f"imageName {image!r} is not pinned to a tag")
        if not spec.get("storage", {}).get("size"):
            err(c, "storage.size must be set")
        res = spec.get("resources", {})
        if not all("memory" in res.get(p, {}) for p in ("requests", "limits")):
            err(c, "resources.requests and resources.limits need memory")
        archivers = [p for p in spec.get("plugins", []) if p.get("isWALArchiver") and p.get("enabled", True)]
        if len(archivers) != 1 and not spec.get("backup", {}).get("barmanObjectStore"):
            err(c, "needs exactly one WAL archiver (a plugin with isWALArchiver: true): no backups otherwise")
        for p in archivers:
            obj = p.get("parameters", {}).get("barmanObjectName")
            if p["name"] == "barman-cloud.cloudnative-pg.io" and obj not in stores:
                err(c, f"WAL archiver names ObjectStore {obj!r}, which is not rendered")
        if not any(s["spec"]["cluster"].get("name") == name for s in kinds.get("ScheduledBackup", [])):
            err(c, "no ScheduledBackup: a WAL archive without base backups cannot be restored")
    for s in kinds.get("ObjectStore", []):
        if "serverName" in s["spec"].get("configuration", {}):
            err(s, "configuration.serverName must be left empty (use the plugin parameter)")
    for s in kinds.get("ScheduledBackup", []):
        c = clusters.get(s["spec"]["cluster"].get("name"))
        if c is None:
            err(s, "its cluster is not rendered")
            continue
        if len(s["spec"]["schedule"].split()) != 6:
            err(s, "schedule needs six fields (seconds first), unlike a CronJob's")
        if s["spec"].get("method") == "plugin":
            plugin = s["spec"].get("pluginConfiguration", {}).get("name")
            if plugin not in {p["name"] for p in c["spec"].get("plugins", [])}:
                err(s, f"plugin {plugin!r} is not configured on the cluster")
    for d in kinds.get("Database", []):
        c = d["spec"]["cluster"].get("name")
        if c not in clusters:
            err(d, f"cluster {c!r} is not rendered")
        owner = d["spec"]["owner"]
        init_owners = {o for (cl, _), (o, _) in dbs.items() if cl == c}
        if (c, owner) not in roles and owner not in init_owners:
            err(d, f"owner {owner!r} is neither a DatabaseRole of {c} nor its bootstrap owner")
        dbs[(c, d["spec"]["name"])] = (owner, roles.get((c, owner)))

    # Every workload's *_DATABASE_URL: the primary's Service of a rendered
    # cluster, read-write sessions only, credentials from the Secret that
    # belongs to the owner of the database it names.
    for d in kinds.get("Deployment", []) + kinds.get("Job", []) + kinds.get("CronJob", []):
        for ct in containers(d):
            env = {e["name"]: e for e in ct.get("env", [])}
            for name, e in env.items():
                if not name.endswith("DATABASE_URL") or "value" not in e:
                    continue
                m = URL.match(e["value"])
                if not m:
                    err(d, f"{name}: expected postgres://$(USER):$(PASSWORD)@<cluster>-rw:5432/<db>?target_session_attrs=read-write")
                    continue
                host = m["host"].split(".")[0]
                cluster = host[:-3] if host.endswith("-rw") else None
                if cluster not in clusters:
                    err(d, f"{name}: host {m['host']!r} is not the -rw Service of a rendered Cluster")
                    continue
                if "target_session_attrs=read-write" not in (m["query"] or "").split("&"):
                    err(d, f"{name}: needs target_session_attrs=read-write")
                if (cluster, m["db"]) not in dbs:
                    err(d, f"{name}: database {m['db']!r} is not declared in {cluster}")
                    continue
                _, secret = dbs[(cluster, m["db"])]
                for part, key in (("user", "username"), ("password", "password")):
                    ref = env.get(m[part], {}).get("valueFrom", {}).get("secretKeyRef", {})
                    if ref.get("name") != secret or ref.get("key") != key:
                        err(d, f"{name}: $({m[part]}) must come from Secret {secret} key {key}")
                pods = d["spec"].get("jobTemplate", d)["spec"]["template"]["metadata"].get("labels", {})
                if not egress_to(kinds.get("NetworkPolicy", []), pods, cluster):
                    err(d, f"no NetworkPolicy admits its egress to the pods of {cluster} on 5432")
    return errors


def egress_to(policies, pod_labels, cluster):
    for n in policies:
        sel = n["spec"].get("podSelector", {}).get("matchLabels", {})
        if not sel or any(pod_labels.get(k) != v for k, v in sel.items()):
            continue
        for rule in n["spec"].get("egress", []):
            ports = [p.get("port") for p in rule.get("ports", [])]
            peers = [p.get("podSelector", {}).get("matchLabels", {}) for p in rule.get("to", [])]
            if 5432 in ports and {"cnpg.io/cluster": cluster} in peers:
                return True
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rest", required=True)
    ap.add_argument("crd_dirs", nargs="+")
    args = ap.parse_args()
    schemas, groups = load_crds(args.crd_dirs)
    if not schemas:
        sys.exit(f"no CRDs found in {args.crd_dirs}")
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    errors, rest, checked = [], [], 0
    for d in docs:
        found = schema_errors(d, schemas, groups)
        if found is None:
            rest.append(d)
        else:
            checked += 1
            errors += found
    # The checks below read fields the schemas guarantee; on a schema error
    # they would only add noise.
    if not errors:
        errors += cnpg_checks(docs)
    pathlib.Path(args.rest).write_text(yaml.safe_dump_all(rest, sort_keys=False))
    if errors:
        print("\n".join(f"  {e}" for e in errors))
        sys.exit(1)
    print(checked)


if __name__ == "__main__":
    main()
