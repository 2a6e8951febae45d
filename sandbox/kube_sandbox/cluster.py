"""The API semantics of kube-apiserver over the store: create, get, list, update, patch, apply, delete.

HTTP lives in `api.py`; controllers call these same methods, so every write, from a client or a controller,
goes through one path: decoding, defaulting, validation, resourceVersion, generation, managedFields.
"""

from __future__ import annotations

import base64
import copy
import datetime
import json
import random
import uuid
from collections.abc import Callable
from typing import Any

from kube_sandbox import fields
from kube_sandbox import schema as k8s
from kube_sandbox.defaults import apply_defaults, created_status
from kube_sandbox.errors import ApiError, bad_request, conflict, not_found
from kube_sandbox.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from kube_sandbox.resources import PREINSTALLED_CRDS, Registry, ResourceType, from_crd
from kube_sandbox.selectors import SelectorError, field_matcher, label_matcher
from kube_sandbox.store import Key, Store, clone
from kube_sandbox.validation import admit_decoding, check_name, validate

CRD = ("apiextensions.k8s.io", "customresourcedefinitions")
NODE = "sandbox-node"  # the one node every pod is scheduled to


def node() -> dict[str, Any]:
    """The sandbox's Node, as a kubelet registers one: addresses, capacity, Ready, and its system info."""
    resources = {"cpu": "2", "memory": "8Gi", "pods": "110", "ephemeral-storage": "50Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE,
            "labels": {
                "kubernetes.io/hostname": NODE,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": "amd64",
            },
        },
        "spec": {},
        "status": {
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": NODE}],
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "lastHeartbeatTime": now(),
                    "lastTransitionTime": now(),
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                }
            ],
            "nodeInfo": {
                "kubeletVersion": "v1.35.0",
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "sandbox://1",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "osImage": "kube-sandbox",
                "kernelVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        },
    }


# Admission webhooks, as kube-apiserver calls them: mutating ones on create after defaulting, validating ones
# after the built-in validation, on every write but status (`old` is None on create).
Mutator = Callable[[ResourceType, dict[str, Any]], None]
Validator = Callable[[ResourceType, dict[str, Any], dict[str, Any] | None], None]
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_META_KEEP = (
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "namespace",
    "name",
    "managedFields",
)


def _check_fresh(rt: ResourceType, old: dict[str, Any], wanted_rv: str | None) -> None:
    """Optimistic concurrency: a write that names a resourceVersion must name the current one."""
    if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
        raise conflict(
            rt.qualified,
            old["metadata"]["name"],
            rt.group,
            rt.plural,
            "the object has been modified; please apply your changes to the latest version and try again",
        )


def _shares_fields(a: str, b: str) -> bool:
    """Managers of these subresources own fields of one object: a write through /scale owns the parent's
    spec.replicas (k8s.io/apimachinery managedfields ScaleHandler), so it and the main resource compete."""
    return a == b or {a, b} == {"", "scale"}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(length: int = 5) -> str:
    return "".join(random.choice(_NAME_CHARS) for _ in range(length))  # noqa: S311 - names, not secrets


ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def _mount_token(spec: dict[str, Any]) -> None:
    """mountServiceAccountToken: a `kube-api-access-XXXXX` projected volume (the bound token, the cluster's CA and
    the namespace; TokenVolumeSource) mounted read-only at ACCOUNT_MOUNT in each container that mounts nothing there."""
    volumes = spec.setdefault("volumes", [])
    found = next((v["name"] for v in volumes if str(v.get("name", "")).startswith("kube-api-access-")), None)
    name = found or f"kube-api-access-{random_suffix()}"
    needed = False
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        mounts = container.setdefault("volumeMounts", [])
        if not any(m.get("mountPath") == ACCOUNT_MOUNT for m in mounts):
            mounts.append({"name": name, "readOnly": True, "mountPath": ACCOUNT_MOUNT})
            needed = True
    if found is None and needed:
        projected = {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {
                    "downwardAPI": {
                        "items": [
                            {"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}
                        ]
                    }
                },
            ],
        }
        volumes.append({"name": name, "projected": projected})
    if not volumes:
        spec.pop("volumes")


class Cluster:
    """One emulated cluster: resource types, objects and the rules for changing them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.registry = Registry()
        self.warnings: list[str] = []  # of the last write, read by the HTTP layer right after the call
        self.mutators: list[Mutator] = []
        self.mount_tokens = False  # the ServiceAccount plugin's token volume: set where tokens are issued
        self.validators: list[Validator] = []
        for crd in [o for k, o in store.objects.items() if k[:2] == CRD]:
            self.registry.add(from_crd(crd))
        for crd in PREINSTALLED_CRDS:
            if self.store.get((*CRD, "", crd["metadata"]["name"])) is None:
                self.create(self.rt(CRD[0], "v1", CRD[1]), "v1", "", copy.deepcopy(crd), manager="sandbox")
        # istiod makes its GatewayClass once the Gateway API CRDs exist (istio/istio pilot/pkg/config/kube/gateway
        # gatewayclass.go): Gateways of class istio are served by the sandbox's gateway (mesh.py)
        if self.store.get(("gateway.networking.k8s.io", "gatewayclasses", "", "istio")) is None:
            gateway_class = {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "GatewayClass",
                "metadata": {"name": "istio"},
                "spec": {
                    "controllerName": "istio.io/gateway-controller",
                    "description": "The default Istio GatewayClass",
                },
            }
            self.create(
                self.rt("gateway.networking.k8s.io", "v1", "gatewayclasses"),
                "v1",
                "",
                gateway_class,
                manager="pilot-discovery",
            )
        for name in ("default", "kube-system", "kube-public"):
            if self.store.get(("", "namespaces", "", name)) is None:
                self.create(self.rt("", "v1", "namespaces"), "v1", "", {"metadata": {"name": name}}, manager="sandbox")
        self._local_api_services()
        if self.store.get(("", "nodes", "", NODE)) is None:  # a kubelet registers, then reports its status
            nodes, registered = self.rt("", "v1", "nodes"), node()
            created = self.create(nodes, "v1", "", registered, manager="kubelet")
            self.update(
                nodes,
                "v1",
                "",
                NODE,
                {**created, "status": registered["status"]},
                manager="kubelet",
                subresource="status",
            )

    def _local_api_services(self) -> None:
        """An APIService for each served group version, as kube-apiserver's autoregister controller makes them
        (`v1.`, `v1.apps`, and those of CRDs): served locally, always Available."""
        for group, version in sorted({(rt.group, v) for rt in self.registry.all() for v in rt.versions}):
            self.local_api_service(group, version)

    def local_api_service(self, group: str, version: str) -> None:
        name = f"{version}.{group}"
        if self.store.get(("apiregistration.k8s.io", "apiservices", "", name)) is not None:
            return
        services = self.rt("apiregistration.k8s.io", "v1", "apiservices")
        service = {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": name, "labels": {"kube-aggregator.kubernetes.io/automanaged": "onstart"}},
            "spec": {"group": group, "version": version, "groupPriorityMinimum": 18000, "versionPriority": 15},
        }
        created = self.create(services, "v1", "", service, manager="kube-apiserver")
        available = {"type": "Available", "status": "True", "lastTransitionTime": now(), "reason": "Local"}
        available["message"] = "Local APIServices are always available"
        created["status"] = {"conditions": [available]}
        self.update(services, "v1", "", name, created, manager="kube-apiserver", subresource="status")

    def bind(self, namespace: str, name: str, node_name: str) -> dict[str, Any] | None:
        """What the scheduler's POST pods/NAME/binding does (pkg/registry/core/pod/storage BindingREST
        setPodNodeName): spec.nodeName set once, outside the update path that keeps a pod's spec immutable."""
        key = ("", "pods", namespace, name)
        pod = self.store.get(key)
        if pod is None or pod["spec"].get("nodeName") or pod["metadata"].get("deletionTimestamp"):
            return pod
        bound = {**pod, "spec": {**pod["spec"], "nodeName": node_name}}
        return self.store.put(key, bound)

    # --- helpers --------------------------------------------------------------------------------------------

    def rt(self, group: str, version: str, plural: str) -> ResourceType:
        found = self.registry.get(group, version, plural)
        if found is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return found

    def key(self, rt: ResourceType, namespace: str, name: str) -> Key:
        return (rt.group, rt.plural, namespace if rt.namespaced else "", name)

    @staticmethod
    def present(rt: ResourceType, version: str, obj: dict[str, Any]) -> dict[str, Any]:
        """The stored object as served in `version`."""
        return {
            "apiVersion": rt.api_version(version),
            "kind": rt.kind,
            **{k: v for k, v in obj.items() if k not in ("apiVersion", "kind")},
        }

    def _existing(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        obj = self.store.get(self.key(rt, namespace, name))
        if obj is None:
            raise not_found(rt.qualified, name, rt.group, rt.plural)
        return obj

    def _check_namespace(self, rt: ResourceType, namespace: str) -> None:
        if not rt.namespaced:
            return
        ns = self.store.get(("", "namespaces", "", namespace))
        if ns is None:
            raise not_found("namespaces", namespace, "", "namespaces")
        if ns["metadata"].get("deletionTimestamp"):
            raise ApiError(
                403,
                "Forbidden",
                f"{rt.qualified} is forbidden: unable to create new content in "
                f"namespace {namespace} because it is being terminated",
            )

    def _schema(self, rt: ResourceType, version: str) -> dict[str, Any] | None:
        if not rt.builtin:
            return rt.crd_schemas.get(version)
        definition = k8s.definition_for(rt.group, version, rt.kind)
        return k8s.definitions().get(definition) if definition else None

    def _view(self, rt: ResourceType, obj: dict[str, Any], subresource: str) -> dict[str, Any]:
        """The part of an object a request on `subresource` manages (status lives apart when it has its own)."""
        if subresource == "status":
            return {"status": obj.get("status")} if "status" in obj else {}
        if rt.has_status:
            return {k: v for k, v in obj.items() if k != "status"}
        return obj

    # --- reads -----------------------------------------------------------------------------------------------

    def get(self, rt: ResourceType, version: str, namespace: str, name: str) -> dict[str, Any]:
        return self.present(rt, version, self._existing(rt, namespace, name))

    def list(
        self,
        rt: ResourceType,
        version: str,
        namespace: str | None,
        *,
        labels: str | None = None,
        field_selector: str | None = None,
        limit: int = 0,
        cont: str | None = None,
    ) -> dict[str, Any]:
        """A List object: filtered, sorted by namespace and name, paginated with limit/continue."""
        try:
            by_labels, by_fields = label_matcher(labels), field_matcher(field_selector, rt.kind)
        except SelectorError as exc:
            raise bad_request(str(exc)) from None
        items = [
            o
            for o in self.store.items(rt.group, rt.plural, namespace if rt.namespaced else None)
            if by_labels(o["metadata"].get("labels") or {}) and by_fields(o)
        ]
        list_rv = str(self.store.rv)
        if cont:
            try:
                token = json.loads(base64.urlsafe_b64decode(cont.encode()))
                start = token["start"]
            except (ValueError, KeyError, TypeError):
                raise bad_request("continue key is not valid") from None
            if int(token["rv"]) < self.store.oldest_rv:
                raise ApiError(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent "
                    "list result. You can start a new list without the continue parameter.",
                )
            list_rv = token["rv"]
            items = [o for o in items if [o["metadata"].get("namespace", ""), o["metadata"]["name"]] > start]
        meta: dict[str, Any] = {"resourceVersion": list_rv}
        if limit and len(items) > limit:
            last = items[limit - 1]["metadata"]
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"rv": list_rv, "start": [last.get("namespace", ""), last["name"]]}).encode()
            ).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        shown = [self.present(rt, version, o) for o in items]
        return {"apiVersion": rt.api_version(version), "kind": f"{rt.kind}List", "metadata": meta, "items": shown}

    # --- writes ----------------------------------------------------------------------------------------------

    def create(
        self,
        rt: ResourceType,
        version: str,
        namespace: str,
        body: Any,
        *,
        manager: str | None,
        mode: str = "Warn",
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """POST: 201 with the stored object; 409 if it exists; 404 if the namespace does not."""
        body = self._decode_body(rt, version, body)
        meta = body.setdefault("metadata", {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(
                    422,
                    "Invalid",
                    f'{rt.kind} "" is invalid: metadata.name: Required value: name or generateName is required',
                )
            meta["name"] = meta["generateName"] + random_suffix()
        self._place(rt, namespace, meta)
        check_name(rt, meta["name"])
        self._check_namespace(rt, namespace)
        key = self.key(rt, namespace, meta["name"])
        if self.store.get(key) is not None:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{rt.qualified} "{meta["name"]}" already exists',
                details={"name": meta["name"], "group": rt.group, "kind": rt.plural},
            )
        obj, self.warnings = admit_decoding(rt, version, body, mode=mode)
        apply_defaults(rt.kind, obj)
        if rt.has_status and rt.kind != "Namespace":
            obj.pop("status", None)
            if rt.builtin and (status := created_status(rt.kind, obj)) is not None:
                obj["status"] = status
        if rt.kind == "Pod" and rt.builtin:
            self._admit_service_account(namespace, obj)
        for mutate in self.mutators:
            mutate(rt, obj)
        if rt.kind == "Pod" and rt.builtin:
            self._mount_tokens(namespace, obj)
        validate(rt, obj, None)
        for check in self.validators:
            check(rt, obj, None)
        meta = obj["metadata"]
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now())
        self._admit_new(rt, obj)
        meta.pop("resourceVersion", None)
        if "spec" in obj or not rt.builtin:
            meta["generation"] = 1
        if manager is not None:  # None: server-side apply already recorded ownership
            self._record_update(rt, version, None, obj, manager=manager, subresource="")
        if dry_run:
            return self.present(rt, version, obj)
        stored = self.store.put(key, obj)
        self._after_create(rt, stored)
        return self.present(rt, version, stored)

    def _after_create(self, rt: ResourceType, stored: dict[str, Any]) -> None:
        if (rt.group, rt.plural) == CRD:
            self.registry.add(from_crd(stored))
        if rt.kind == "Namespace" and rt.builtin:
            self._default_service_account(stored["metadata"]["name"])

    def update(
        self,
        rt: ResourceType,
        version: str,
        namespace: str,
        name: str,
        body: Any,
        *,
        manager: str,
        subresource: str = "",
        mode: str = "Warn",
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """PUT: 409 on a stale resourceVersion; the main resource ignores status and vice versa."""
        old = self._existing(rt, namespace, name)
        body = self._decode_body(rt, version, body)
        meta = body.setdefault("metadata", {})
        if meta.get("name", name) != name:
            raise bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({name})")
        wanted_rv = meta.get("resourceVersion")
        _check_fresh(rt, old, wanted_rv)
        body, self.warnings = admit_decoding(rt, version, body, mode=mode)
        return self._commit(rt, version, old, body, manager=manager, subresource=subresource, dry_run=dry_run)

    def patch(
        self,
        rt: ResourceType,
        version: str,
        namespace: str,
        name: str,
        *,
        patch_type: str,
        body: Any,
        manager: str | None,
        subresource: str = "",
        force: bool = False,
        mode: str = "Warn",
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """PATCH with json-patch, merge-patch, strategic-merge-patch or server-side apply."""
        if patch_type == "apply":
            if not manager:
                raise bad_request(
                    'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch'
                )
            return self.apply(
                rt,
                version,
                namespace,
                name,
                body,
                manager=manager,
                force=force,
                subresource=subresource,
                mode=mode,
                dry_run=dry_run,
            )
        old = self._existing(rt, namespace, name)
        current = self.present(rt, version, old)
        try:
            if patch_type == "json":
                patched = json_patch(current, body)
            elif patch_type == "merge":
                patched = merge_patch(current, body)
            elif patch_type == "strategic":
                if not rt.builtin:
                    raise ApiError(
                        415,
                        "UnsupportedMediaType",
                        "strategic merge patch is not supported for custom resources; use a JSON merge patch",
                    )
                patched = strategic_merge_patch(current, body, self._schema(rt, version))
            else:
                raise ApiError(415, "UnsupportedMediaType", f"the patch type {patch_type!r} is not supported")
        except PatchError as exc:
            raise ApiError(422, "Invalid", str(exc)) from None
        if not isinstance(patched, dict):
            raise bad_request("the patch produced something other than an object")
        wanted_rv = (patched.get("metadata") or {}).get("resourceVersion")
        _check_fresh(rt, old, wanted_rv)
        patched, self.warnings = admit_decoding(rt, version, patched, mode=mode)
        return self._commit(
            rt, version, old, patched, manager=manager or "unknown", subresource=subresource, dry_run=dry_run
        )

    def apply(
        self,
        rt: ResourceType,
        version: str,
        namespace: str,
        name: str,
        body: Any,
        *,
        manager: str,
        force: bool,
        subresource: str = "",
        mode: str = "Strict",
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Server-side apply: creates if missing, merges owned fields, 409 on conflicts unless forced."""
        if not isinstance(body, dict) or not body.get("apiVersion") or not body.get("kind"):
            raise bad_request("apply patches must specify apiVersion and kind")
        body = self._decode_body(rt, version, body)
        if body.setdefault("metadata", {}).setdefault("name", name) != name:
            raise bad_request(
                f"the name of the object ({body['metadata']['name']}) does not match the name on the URL ({name})"
            )
        applied, self.warnings = admit_decoding(rt, version, body, mode=mode)
        schema = self._schema(rt, version)
        applied_view = self._view(rt, applied, subresource)
        applied_set = fields.field_set(applied_view, schema)
        old = self.store.get(self.key(rt, namespace, name))
        base = old or {"apiVersion": rt.api_version(version), "kind": rt.kind, "metadata": {"name": name}}
        entries = [dict(e) for e in (base["metadata"].get("managedFields") or [])]
        mine = next(
            (
                e
                for e in entries
                if (e["manager"], e["operation"], e.get("subresource", "")) == (manager, "Apply", subresource)
            ),
            None,
        )
        others: dict[tuple[str, str], set[fields.Path]] = {}
        for entry in entries:
            if entry is not mine and _shares_fields(entry.get("subresource", ""), subresource):
                owner = (entry["manager"], entry.get("apiVersion", ""))
                others[owner] = others.get(owner, set()) | fields.from_fields_v1(entry.get("fieldsV1", {}))
        found = fields.conflicts(self._view(rt, base, subresource), applied_view, applied_set, others)
        if found and not force and manager == "kubectl" and old is not None:
            # kubectl moving from client-side to server-side apply takes over, without a conflict, the fields
            # the last-applied-configuration annotation lists with the values they still have (apiserver
            # pkg/endpoints/handlers/fieldmanager lastappliedmanager.go: only for the manager "kubectl")
            allowed = self._last_applied_fields(old, schema)
            if all(c.path in allowed for c in found):
                force = True
            else:
                found = [c for c in found if c.path not in allowed]
        if found and not force:
            text = "; ".join(c.describe() for c in found)
            raise ApiError(
                409,
                "Conflict",
                f"Apply failed with {len(found)} conflict{'s' if len(found) > 1 else ''}: {text}",
                details={
                    "causes": [
                        {"reason": "FieldManagerConflict", "message": c.describe(), "field": c.field} for c in found
                    ]
                },
            )
        merged = fields.apply_merge(base, applied, schema)
        previously = fields.from_fields_v1(mine["fieldsV1"]) if mine else set()
        owned_by_others = set().union(*others.values()) if others else set()
        fields.prune(merged, previously - applied_set - owned_by_others, kept=applied_set | owned_by_others)
        forced = {c.path for c in found}
        for entry in entries:
            if entry is not mine and _shares_fields(entry.get("subresource", ""), subresource):
                entry["fieldsV1"] = fields.to_fields_v1(fields.from_fields_v1(entry.get("fieldsV1", {})) - forced)
        entries = [e for e in entries if e is not mine and e.get("fieldsV1")]
        entries.append(self._entry(manager, "Apply", rt.api_version(version), applied_set, subresource))
        merged["metadata"]["managedFields"] = entries
        if old is None:
            return self.create(rt, version, namespace, merged, manager=None, mode="Ignore", dry_run=dry_run)
        return self._commit(rt, version, old, merged, manager=None, subresource=subresource, dry_run=dry_run)

    def delete(
        self,
        rt: ResourceType,
        version: str,
        namespace: str,
        name: str,
        *,
        options: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """DELETE: preconditions, finalizers and propagation policies (Foreground, Background, Orphan)."""
        options = options or {}
        obj = self._existing(rt, namespace, name)
        meta = obj["metadata"]
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != meta["uid"]:
            raise conflict(
                rt.qualified,
                name,
                rt.group,
                rt.plural,
                f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: {meta['uid']}",
            )
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
            raise conflict(
                rt.qualified,
                name,
                rt.group,
                rt.plural,
                f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
                f"ResourceVersion in object meta: {meta['resourceVersion']}",
            )
        if dry_run:
            return self.present(rt, version, obj)
        policy = options.get("propagationPolicy") or ("Orphan" if options.get("orphanDependents") else "Background")
        finalizers = list(meta.get("finalizers") or [])
        if policy == "Foreground" and "foregroundDeletion" not in finalizers:
            finalizers.append("foregroundDeletion")
        if policy == "Orphan" and "orphan" not in finalizers:
            finalizers.append("orphan")
        if rt.kind == "Namespace":
            obj.setdefault("status", {})["phase"] = "Terminating"
        if finalizers or rt.kind == "Namespace":
            if not meta.get("deletionTimestamp"):
                meta.update(deletionTimestamp=now(), deletionGracePeriodSeconds=0, finalizers=finalizers)
                if meta["finalizers"] == []:
                    del meta["finalizers"]
                obj = self.store.put(self.key(rt, namespace, name), obj)
            return self.present(rt, version, obj)
        gone = self.store.delete(self.key(rt, namespace, name))
        self._after_delete(rt, gone)
        return self.present(rt, version, gone or obj)

    # --- internals -------------------------------------------------------------------------------------------

    def _decode_body(self, rt: ResourceType, version: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request(f"Object '{rt.kind}' is missing or not an object")
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if kind and kind != rt.kind:
            raise bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")
        if api_version and api_version != rt.api_version(version):
            raise bad_request(
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({rt.api_version(version)})"
            )
        return clone(body)

    @staticmethod
    def _last_applied_fields(live: dict[str, Any], schema: dict[str, Any] | None) -> set[fields.Path]:
        """The fields of kubectl's last-applied-configuration whose values the live object still has."""
        text = (live["metadata"].get("annotations") or {}).get("kubectl.kubernetes.io/last-applied-configuration")
        try:
            last = json.loads(text) if text else None
        except ValueError:
            return set()
        if not isinstance(last, dict):
            return set()
        return {
            path
            for path in fields.field_set(last, schema)
            if fields.value_at(last, path) == fields.value_at(live, path)
        }

    def _admit_service_account(self, namespace: str, pod: dict[str, Any]) -> None:
        """The ServiceAccount admission plugin (plugin/pkg/admission/serviceaccount/admission.go): a pod runs as
        `default` unless it names another, and is forbidden when that account does not exist; where the sandbox
        issues tokens (`mount_tokens`, with --auth rbac), every container mounts the account's token."""
        spec = pod.get("spec")
        if not isinstance(spec, dict):
            return
        account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        spec["serviceAccountName"] = account
        spec["serviceAccount"] = account  # the deprecated field, kept equal by conversion
        if self.store.get(("", "serviceaccounts", namespace, account)) is None:
            meta = pod.get("metadata") or {}
            name = meta.get("name") or meta.get("generateName") or ""
            raise ApiError(
                403,
                "Forbidden",
                f'pods "{name}" is forbidden: error looking up service account {namespace}/{account}: '
                f'serviceaccount "{account}" not found',
                details={"name": name, "kind": "pods"},
            )

    def _mount_tokens(self, namespace: str, pod: dict[str, Any]) -> None:
        """The plugin's token volume, once the webhooks have added their containers too (in-tree mutating plugins
        are invoked again after webhooks change an object, so an injected sidecar mounts the token as well)."""
        spec = pod.get("spec")
        if not self.mount_tokens or not isinstance(spec, dict):
            return
        account = self.store.peek(("", "serviceaccounts", namespace, spec.get("serviceAccountName", ""))) or {}
        automount = spec.get("automountServiceAccountToken", account.get("automountServiceAccountToken", True))
        if automount is not False:
            _mount_token(spec)

    def _default_service_account(self, namespace: str) -> None:
        """The serviceaccounts controller's `default` account in every namespace (created here at once, where
        kube-controller-manager does it within moments: pods created right after their namespace find it)."""
        if self.store.get(("", "serviceaccounts", namespace, "default")) is None:
            account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}
            self.create(
                self.rt("", "v1", "serviceaccounts"), "v1", namespace, account, manager="kube-controller-manager"
            )

    def _admit_new(self, rt: ResourceType, obj: dict[str, Any]) -> None:
        """What the apiserver fills in on create: Service cluster IPs, a Job's selector and labels."""
        spec = obj.get("spec")
        if rt.kind == "Service" and isinstance(spec, dict) and spec.get("type") != "ExternalName":
            if not spec.get("clusterIP"):
                self.next_ip += 1
                spec["clusterIP"] = f"10.96.{self.next_ip // 254}.{self.next_ip % 254 + 1}"
            if spec["clusterIP"] != "None":
                spec.setdefault("clusterIPs", [spec["clusterIP"]])
                spec.setdefault("ipFamilies", ["IPv4"])
                spec.setdefault("ipFamilyPolicy", "SingleStack")
        if rt.kind == "Job" and isinstance(spec, dict) and not spec.get("manualSelector"):
            uid, name = obj["metadata"]["uid"], obj["metadata"]["name"]
            labels = {
                "batch.kubernetes.io/controller-uid": uid,
                "batch.kubernetes.io/job-name": name,
                "controller-uid": uid,
                "job-name": name,
            }
            spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
            template = spec.setdefault("template", {})
            template.setdefault("metadata", {}).setdefault("labels", {}).update(labels)

    next_ip = 0

    @staticmethod
    def _place(rt: ResourceType, namespace: str, meta: dict[str, Any]) -> None:
        if rt.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)

    def _commit(
        self,
        rt: ResourceType,
        version: str,
        old: dict[str, Any],
        new: dict[str, Any],
        *,
        manager: str | None,
        subresource: str,
        dry_run: bool,
    ) -> dict[str, Any]:
        """Store `new` over `old`: keep what clients cannot change, bump generation, record ownership."""
        meta = new.setdefault("metadata", {})
        for key in _META_KEEP:
            if key in old["metadata"] and not (key == "managedFields" and manager is None):
                meta[key] = clone(old["metadata"][key])
            elif key != "managedFields":
                meta.pop(key, None)
        new = self._split_status(
            rt,
            old,
            {**new, "apiVersion": old.get("apiVersion", new.get("apiVersion")), "kind": rt.kind},
            subresource=subresource,
            keep_meta=manager is None,
        )
        apply_defaults(rt.kind, new)
        if subresource != "status":
            validate(rt, new, old)
            for check in self.validators:
                check(rt, new, old)
        if "generation" in old["metadata"] and self._spec_changed(old, new):
            new["metadata"]["generation"] = old["metadata"]["generation"] + 1
        if manager is not None:
            self._record_update(rt, version, old, new, manager=manager, subresource=subresource)
        if dry_run:
            return self.present(rt, version, new)
        return self.present(rt, version, self._store(rt, old, new))

    @staticmethod
    def _split_status(
        rt: ResourceType, old: dict[str, Any], new: dict[str, Any], *, subresource: str, keep_meta: bool
    ) -> dict[str, Any]:
        """A status write changes only status; a main-resource write keeps the old status (if it has its own)."""
        if subresource == "status":
            merged = (
                {**old, "status": new["status"]}
                if new.get("status") is not None
                else {k: v for k, v in old.items() if k != "status"}
            )
            merged["metadata"] = new["metadata"] if keep_meta else {**old["metadata"]}
            return merged
        if rt.has_status:
            new = {k: v for k, v in new.items() if k != "status"}
            if "status" in old:
                new["status"] = old["status"]
        return new

    def _store(self, rt: ResourceType, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        """Write `new`, or delete it when its last finalizer went; an unchanged object is not written."""
        meta = new["metadata"]
        key = self.key(rt, meta.get("namespace", ""), meta["name"])
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and rt.kind != "Namespace":
            gone = self.store.delete(key)
            self._after_delete(rt, gone)
            return gone or new
        if new == old:
            return old
        stored = self.store.put(key, new)
        if (rt.group, rt.plural) == CRD:
            self.registry.add(from_crd(stored))
        return stored

    @staticmethod
    def _spec_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
        skip = ("metadata", "status", "apiVersion", "kind")
        return {k: v for k, v in old.items() if k not in skip} != {k: v for k, v in new.items() if k not in skip}

    def _entry(
        self, manager: str, operation: str, api_version: str, paths: set[fields.Path], subresource: str
    ) -> dict[str, Any]:
        entry = {
            "manager": manager,
            "operation": operation,
            "apiVersion": api_version,
            "time": now(),
            "fieldsType": "FieldsV1",
            "fieldsV1": fields.to_fields_v1(paths),
        }
        if subresource:
            entry["subresource"] = subresource
        return entry

    def _record_update(
        self,
        rt: ResourceType,
        version: str,
        old: dict[str, Any] | None,
        new: dict[str, Any],
        *,
        manager: str,
        subresource: str,
    ) -> None:
        """An Update operation: the manager takes the fields it changed; removed fields leave every set."""
        schema = self._schema(rt, version)
        old_view = self._view(rt, old or {}, subresource)
        new_view = self._view(rt, new, subresource)
        old_set, new_set = fields.field_set(old_view, schema), fields.field_set(new_view, schema)
        changed = {p for p in new_set if fields.value_at(old_view, p) != fields.value_at(new_view, p)}
        removed = old_set - new_set
        entries = [dict(e) for e in (new["metadata"].get("managedFields") or [])]
        key = (manager, "Update", subresource)
        mine = next((e for e in entries if (e["manager"], e["operation"], e.get("subresource", "")) == key), None)
        for entry in entries:
            if _shares_fields(entry.get("subresource", ""), subresource) and entry is not mine:
                entry["fieldsV1"] = fields.to_fields_v1(
                    fields.from_fields_v1(entry.get("fieldsV1", {})) - removed - changed
                )
        entries = [e for e in entries if e is not mine and e.get("fieldsV1")]
        owned = (fields.from_fields_v1(mine["fieldsV1"]) if mine else set()) - removed | changed
        if owned:
            entries.append(self._entry(manager, "Update", rt.api_version(version), owned, subresource))
        if entries:
            new["metadata"]["managedFields"] = entries
        else:
            new["metadata"].pop("managedFields", None)

    def _after_delete(self, rt: ResourceType, gone: dict[str, Any] | None) -> None:
        if gone is not None and (rt.group, rt.plural) == CRD:
            spec = gone["spec"]
            self.registry.remove(spec["group"], spec["names"]["plural"])
            for key in [k for k in self.store.objects if k[:2] == (spec["group"], spec["names"]["plural"])]:
                self.store.delete(key)
