"""Authentication and RBAC, as kube-apiserver does them, for a sandbox started with `auth="rbac"`.

Who a request is (authentication, in kube-apiserver's order): a bearer token that is the sandbox's admin token
(`system:masters`), or a ServiceAccount token the sandbox signed (TokenRequest, or a legacy token Secret); an
Authorization header that is not a valid bearer token is 401; no credentials at all is `system:anonymous`.
What it may do (authorization): `system:masters` everything (the privileged-group authorizer kube-apiserver puts
first), then RBAC as plugin/pkg/auth/authorizer/rbac/rbac.go evaluates it: ClusterRoleBindings, then the request
namespace's RoleBindings, rules matched as pkg/apis/rbac/v1/evaluation_helpers.go matches them (verbs, API groups,
resources with `resource/subresource` and `*/subresource`, resourceNames, nonResourceURLs with a trailing `*`).
A denial is 403 with the message of apiserver's endpoints/handlers/responsewriters/errors.go `forbiddenMessage`,
wrapped as apimachinery's errors.NewForbidden wraps it.

Tokens are JWTs with the claims kube-apiserver writes (pkg/serviceaccount/claims.go, legacy.go), signed HS256
with the sandbox's own key (kube signs RS256/ES256 with its service-account key; clients never look inside).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kube_sandbox.errors import ApiError

MASTERS = "system:masters"
AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
ANONYMOUS = "system:anonymous"
ADMIN = "kube-sandbox-admin"
ISSUER = "https://kubernetes.default.svc.cluster.local"
LEGACY_ISSUER = "kubernetes/serviceaccount"
TOKEN_SECRET = "kubernetes.io/service-account-token"  # noqa: S105 - a Secret type, not a secret
SA_NAME_ANNOTATION = "kubernetes.io/service-account.name"
SA_UID_ANNOTATION = "kubernetes.io/service-account.uid"
MIN_EXPIRATION = 600  # TokenRequest validation: "may not specify a duration less than 10 minutes"
DEFAULT_EXPIRATION = 3600
RBAC = "rbac.authorization.k8s.io"

Lookup = Callable[[str, str, str, str], "dict[str, Any] | None"]  # (group, plural, namespace, name) -> object


@dataclass(frozen=True)
class User:
    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict, compare=False, hash=False)

    def info(self) -> dict[str, Any]:
        """As authentication.k8s.io/v1 UserInfo."""
        out: dict[str, Any] = {"username": self.name}
        if self.uid:
            out["uid"] = self.uid
        out["groups"] = list(self.groups)
        if self.extra:
            out["extra"] = self.extra
        return out


@dataclass(frozen=True)
class Attributes:
    """authorizer.Attributes: one request as RBAC sees it."""

    user: User
    verb: str
    resource_request: bool
    path: str = ""
    group: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""


def service_account_user(namespace: str, name: str, uid: str, extra: dict[str, list[str]] | None = None) -> User:
    """k8s.io/apiserver/pkg/authentication/serviceaccount: the user name and groups of a ServiceAccount."""
    return User(
        f"system:serviceaccount:{namespace}:{name}",
        uid,
        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED),
        extra or {},
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Tokens:
    """Issues and checks the sandbox's tokens."""

    def __init__(self, lookup: Lookup, *, key: bytes, admin_token: str) -> None:
        self.lookup = lookup
        self.key = key  # made, and kept across restarts, by the sandbox (Sandbox._kept)
        self.admin_token = admin_token

    def _sign(self, claims: dict[str, Any]) -> str:
        header = _b64(json.dumps({"alg": "HS256", "kid": "kube-sandbox"}, separators=(",", ":")).encode())
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = hmac.new(self.key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(signature)}"

    def bound(
        self, account: dict[str, Any], *, audiences: list[str], expiration: int, now: float | None = None
    ) -> tuple[str, int]:
        """A TokenRequest's token for `account` (claims.go); its expiry as a Unix time."""
        issued = int(now or time.time())
        meta = account["metadata"]
        expires = issued + expiration
        claims = {
            "aud": audiences,
            "exp": expires,
            "iat": issued,
            "iss": ISSUER,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": meta["namespace"],
                "serviceaccount": {"name": meta["name"], "uid": meta["uid"]},
            },
            "nbf": issued,
            "sub": f"system:serviceaccount:{meta['namespace']}:{meta['name']}",
        }
        return self._sign(claims), expires

    def legacy(self, account: dict[str, Any], secret_name: str) -> str:
        """A legacy token Secret's token (legacy.go): no expiry, valid while the Secret and the account exist."""
        meta = account["metadata"]
        return self._sign(
            {
                "iss": LEGACY_ISSUER,
                "kubernetes.io/serviceaccount/namespace": meta["namespace"],
                "kubernetes.io/serviceaccount/secret.name": secret_name,
                "kubernetes.io/serviceaccount/service-account.name": meta["name"],
                "kubernetes.io/serviceaccount/service-account.uid": meta["uid"],
                "sub": f"system:serviceaccount:{meta['namespace']}:{meta['name']}",
            }
        )

    def authenticate(self, header: str | None) -> User:
        """The request's user; 401 for credentials that do not authenticate (kube's bearer token authenticator)."""
        if not header or not header.startswith("Bearer "):
            return User(ANONYMOUS, "", (UNAUTHENTICATED,))
        token = header[len("Bearer ") :].strip()
        if token and hmac.compare_digest(token, self.admin_token):
            return User(ADMIN, "", (MASTERS, AUTHENTICATED))
        user = self._service_account(token)
        if user is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return user

    def _claims(self, token: str) -> dict[str, Any] | None:
        parts = token.split(".")
        if len(parts) != 3:
            return None
        expected = hmac.new(self.key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(_unb64(parts[2]), expected):
                return None
            claims = json.loads(_unb64(parts[1]))
        except (ValueError, json.JSONDecodeError):
            return None
        return claims if isinstance(claims, dict) else None

    def _service_account(self, token: str) -> User | None:
        claims = self._claims(token)
        if claims is None:
            return None
        if claims.get("iss") == LEGACY_ISSUER:
            namespace = claims.get("kubernetes.io/serviceaccount/namespace", "")
            name = claims.get("kubernetes.io/serviceaccount/service-account.name", "")
            uid = claims.get("kubernetes.io/serviceaccount/service-account.uid", "")
            secret = self.lookup("", "secrets", namespace, claims.get("kubernetes.io/serviceaccount/secret.name", ""))
            stored = base64.b64decode(((secret or {}).get("data") or {}).get("token", "")).decode(errors="replace")
            if secret is None or not hmac.compare_digest(stored, token):
                return None  # the Secret was deleted (or replaced): its token no longer authenticates
            return self._account_user(namespace, name, uid, {})
        private = claims.get("kubernetes.io") or {}
        if claims.get("iss") != ISSUER or not isinstance(private, dict):
            return None
        if not (claims.get("nbf", 0) <= time.time() < claims.get("exp", 0)):
            return None
        account = private.get("serviceaccount") or {}
        extra = {"authentication.kubernetes.io/credential-id": [f"JTI={claims.get('jti', '')}"]}
        return self._account_user(private.get("namespace", ""), account.get("name", ""), account.get("uid", ""), extra)

    def _account_user(self, namespace: str, name: str, uid: str, extra: dict[str, list[str]]) -> User | None:
        account = self.lookup("", "serviceaccounts", namespace, name)
        if account is None or account["metadata"].get("uid") != uid:
            return None  # deleted, or deleted and made again: tokens are bound to the uid
        return service_account_user(namespace, name, uid, extra)


# --- RBAC ---------------------------------------------------------------------------------------------------------


def _verb(rule: dict[str, Any], verb: str) -> bool:
    return any(v in ("*", verb) for v in rule.get("verbs") or [])


def _group(rule: dict[str, Any], group: str) -> bool:
    return any(g in ("*", group) for g in rule.get("apiGroups") or [])


def _resource(rule: dict[str, Any], resource: str, subresource: str) -> bool:
    combined = f"{resource}/{subresource}" if subresource else resource
    for wanted in rule.get("resources") or []:
        if wanted in ("*", combined):
            return True
        if subresource and wanted == f"*/{subresource}":  # evaluation_helpers.go ResourceMatches
            return True
    return False


def _resource_name(rule: dict[str, Any], name: str) -> bool:
    names = rule.get("resourceNames") or []
    return not names or name in names


def _url(rule: dict[str, Any], path: str) -> bool:
    for wanted in rule.get("nonResourceURLs") or []:
        if wanted in ("*", path) or (wanted.endswith("*") and path.startswith(wanted[:-1])):
            return True
    return False


def rule_allows(rule: dict[str, Any], attrs: Attributes) -> bool:
    """RuleAllows (pkg/apis/rbac/v1/evaluation_helpers.go)."""
    if attrs.resource_request:
        return (
            _verb(rule, attrs.verb)
            and _group(rule, attrs.group)
            and _resource(rule, attrs.resource, attrs.subresource)
            and _resource_name(rule, attrs.name)
        )
    return _verb(rule, attrs.verb) and _url(rule, attrs.path)


def _applies(subject: dict[str, Any], user: User, binding_namespace: str) -> bool:
    """appliesToUser (pkg/registry/rbac/validation/rule.go)."""
    kind = subject.get("kind")
    if kind == "User":
        return bool(subject.get("name") == user.name)
    if kind == "Group":
        return subject.get("name") in user.groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return user.name == f"system:serviceaccount:{namespace}:{subject.get('name')}"
    return False


def _describe(subject: dict[str, Any], binding_namespace: str) -> str:
    """describeSubject (rbac.go)."""
    if subject.get("kind") == "ServiceAccount":
        return f'ServiceAccount "{subject.get("name")}/{subject.get("namespace") or binding_namespace}"'
    return f'{subject.get("kind")} "{subject.get("name")}"'


class Authorizer:
    """kube-apiserver's authorizer chain for the sandbox: privileged group, then RBAC from the stored objects."""

    def __init__(self, items: Callable[[str, str, str | None], list[dict[str, Any]]], lookup: Lookup) -> None:
        self.items = items  # (group, plural, namespace or None for all) -> stored objects
        self.lookup = lookup

    def rules(self, user: User, namespace: str) -> tuple[list[tuple[dict[str, Any], str]], list[str]]:
        """Every rule that applies to `user` in `namespace` ("" for cluster scope) with the binding that grants it
        (as rbac.go's describers say it), and the errors met on the way (a binding to a role that does not
        exist), in VisitRulesFor's order: cluster role bindings, then the namespace's role bindings."""
        found: list[tuple[dict[str, Any], str]] = []
        errors: list[str] = []
        for binding in self.items(RBAC, "clusterrolebindings", None):
            subject = next((s for s in binding.get("subjects") or [] if _applies(s, user, "")), None)
            if subject is not None:
                ref = binding.get("roleRef") or {}
                source = (
                    f'ClusterRoleBinding "{binding["metadata"]["name"]}" of {ref.get("kind")} "{ref.get("name")}" '
                    f"to {_describe(subject, '')}"
                )
                self._role_rules(ref, "", source, found, errors)
        if namespace:
            for binding in self.items(RBAC, "rolebindings", namespace):
                subject = next((s for s in binding.get("subjects") or [] if _applies(s, user, namespace)), None)
                if subject is not None:
                    ref = binding.get("roleRef") or {}
                    source = (
                        f'RoleBinding "{binding["metadata"]["name"]}/{namespace}" of {ref.get("kind")} '
                        f'"{ref.get("name")}" to {_describe(subject, namespace)}'
                    )
                    self._role_rules(ref, namespace, source, found, errors)
        return found, errors

    def _role_rules(
        self,
        ref: dict[str, Any],
        namespace: str,
        source: str,
        found: list[tuple[dict[str, Any], str]],
        errors: list[str],
    ) -> None:
        kind, name = ref.get("kind"), ref.get("name", "")
        if kind == "ClusterRole":
            role = self.lookup(RBAC, "clusterroles", "", name)
            missing = f'clusterrole.rbac.authorization.k8s.io "{name}" not found'
        else:
            role = self.lookup(RBAC, "roles", namespace, name)
            missing = f'role.rbac.authorization.k8s.io "{name}" not found'
        if role is None:
            errors.append(missing)
            return
        found.extend((rule, source) for rule in role.get("rules") or [])

    def decide(self, attrs: Attributes) -> tuple[bool, str]:
        """(allowed, reason), as rbac.go Authorize gives them: the binding that allowed it, or on a denial the
        errors met (utilerrors.NewAggregate's format)."""
        if MASTERS in attrs.user.groups:
            return True, ""  # the privileged-group authorizer answers before RBAC, with no reason
        rules, errors = self.rules(attrs.user, attrs.namespace)
        for rule, source in rules:
            if rule_allows(rule, attrs):
                return True, f"RBAC: allowed by {source}"
        if not errors:
            return False, ""
        return False, f"RBAC: {errors[0]}" if len(errors) == 1 else f"RBAC: [{', '.join(errors)}]"

    def check(self, attrs: Attributes) -> None:
        """Raise kube-apiserver's 403 unless `attrs` is allowed."""
        allowed, reason = self.decide(attrs)
        if not allowed:
            raise forbidden(attrs, reason)


def forbidden_message(attrs: Attributes) -> str:
    """responsewriters/errors.go forbiddenMessage."""
    user = attrs.user.name
    if not attrs.resource_request:
        return f'User "{user}" cannot {attrs.verb} path "{attrs.path}"'
    resource = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    if attrs.namespace:
        return (
            f'User "{user}" cannot {attrs.verb} resource "{resource}" in API group "{attrs.group}" '
            f'in the namespace "{attrs.namespace}"'
        )
    return f'User "{user}" cannot {attrs.verb} resource "{resource}" in API group "{attrs.group}" at the cluster scope'


def forbidden(attrs: Attributes, reason: str = "") -> ApiError:
    """responsewriters.Forbidden: errors.NewForbidden(GroupResource{group, resource}, name, message[: reason])."""
    message = forbidden_message(attrs) + (f": {reason}" if reason else "")
    if not attrs.resource_request:
        return ApiError(403, "Forbidden", f"forbidden: {message}", details={})
    qualified = f"{attrs.resource}.{attrs.group}" if attrs.group else attrs.resource
    text = (
        f'{qualified} "{attrs.name}" is forbidden: {message}' if attrs.name else f"{qualified} is forbidden: {message}"
    )
    return ApiError(403, "Forbidden", text, details={"name": attrs.name, "group": attrs.group, "kind": attrs.resource})


# --- request attributes ---------------------------------------------------------------------------------------

_METHOD_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def request_attributes(user: User, method: str, path: str, query: dict[str, str]) -> Attributes:
    """RequestInfoFactory.NewRequestInfo (apiserver pkg/endpoints/request/requestinfo.go), from the path alone:
    authorization comes before routing, so a resource that does not exist is still 403 to whom may not ask."""
    parts = [p for p in path.strip("/").split("/") if p]
    non_resource = Attributes(user, method.lower(), False, path=path)
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return non_resource
    group = ""
    rest = parts[1:]
    if parts[0] == "apis":
        if len(rest) < 3:
            return non_resource
        group, rest = rest[0], rest[1:]
    version, rest = rest[0], rest[1:]
    verb = _METHOD_VERBS.get(method, "")
    if rest[0] in ("watch", "proxy"):  # the deprecated /watch/ and /proxy/ prefixes
        if len(rest) < 2:
            return non_resource
        verb, rest = rest[0], rest[1:]
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in ("status", "finalize"):
            rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 and verb not in ("proxy", "watch") else ""
    if not name and verb == "get":
        verb = "watch" if query.get("watch") in ("true", "1") else "list"
        selector = query.get("fieldSelector", "")
        for term in selector.split(","):  # RequiresExactMatch("metadata.name") on a one-term selector
            key, _, value = term.partition("=")
            if key.strip() == "metadata.name" and "," not in selector and value.lstrip("="):
                name = value.lstrip("=").strip()
    if not name and verb == "delete":
        verb = "deletecollection"
    return Attributes(user, verb, True, path, group, version, resource, subresource, namespace, name)


OPEN_ADMIN = User(ADMIN, "", (MASTERS, AUTHENTICATED))


class Auth:
    """The sandbox's authentication and authorization. `enforce` False (the default `--auth open`): any
    credentials are accepted as the admin (a ServiceAccount token still says whose it is), nothing is refused."""

    def __init__(self, tokens: Tokens, authorizer: Authorizer, *, enforce: bool) -> None:
        self.tokens = tokens
        self.authorizer = authorizer
        self.enforce = enforce

    def identify(self, header: str | None) -> User:
        if self.enforce:
            return self.tokens.authenticate(header)
        if not header or header.count(".") != 2:  # not a JWT: the admin, at no cost per request
            return OPEN_ADMIN
        try:
            user = self.tokens.authenticate(header)
        except ApiError:
            user = None
        if user is None or user.name == ANONYMOUS:
            return OPEN_ADMIN
        return user

    def check(self, attrs: Attributes) -> None:
        if self.enforce:
            self.authorizer.check(attrs)

    def access_review(self, user: User, spec: dict[str, Any]) -> dict[str, Any]:
        """A SelfSubjectAccessReview's status for `spec` (resourceAttributes or nonResourceAttributes)."""
        found = spec.get("resourceAttributes")
        if found is not None:
            attrs = Attributes(
                user,
                found.get("verb", ""),
                True,
                group=found.get("group", ""),
                version=found.get("version", ""),
                resource=found.get("resource", ""),
                subresource=found.get("subresource", ""),
                namespace=found.get("namespace", ""),
                name=found.get("name", ""),
            )
        else:
            other = spec.get("nonResourceAttributes") or {}
            attrs = Attributes(user, other.get("verb", ""), False, path=other.get("path", ""))
        allowed, reason = self.authorizer.decide(attrs) if self.enforce else (True, "")
        status: dict[str, Any] = {"allowed": allowed}
        if reason:
            status["reason"] = reason
        return status

    def rules_review(self, user: User, namespace: str) -> dict[str, Any]:
        """A SelfSubjectRulesReview's status: the rules that apply in `namespace`."""
        if not self.enforce or MASTERS in user.groups:
            rules = [rule for role in BOOTSTRAP_ROLES[:1] for rule in role["rules"]]
            errors: list[str] = []
        else:
            found, errors = self.authorizer.rules(user, namespace)
            rules = [rule for rule, _ in found]
        keys = ("verbs", "apiGroups", "resources", "resourceNames")
        status: dict[str, Any] = {
            "resourceRules": [{k: r[k] for k in keys if r.get(k)} for r in rules if not r.get("nonResourceURLs")],
            "nonResourceRules": [
                {"verbs": r.get("verbs") or [], "nonResourceURLs": r["nonResourceURLs"]}
                for r in rules
                if r.get("nonResourceURLs")
            ],
            "incomplete": bool(errors),
        }
        if errors:
            status["evaluationError"] = ", ".join(errors)
        return status


# --- the bootstrap policy kube-apiserver writes at start (plugin/pkg/auth/authorizer/rbac/bootstrappolicy) --------

_DISCOVERY_URLS = [
    "/livez",
    "/readyz",
    "/healthz",
    "/version",
    "/version/",
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/openapi",
    "/openapi/*",
]
_PUBLIC_URLS = ["/livez", "/readyz", "/healthz", "/version", "/version/"]


def _meta(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
    }


def _cluster_role(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": f"{RBAC}/v1", "kind": "ClusterRole", "metadata": _meta(name), "rules": rules}


def _cluster_binding(name: str, groups: Iterable[str]) -> dict[str, Any]:
    return {
        "apiVersion": f"{RBAC}/v1",
        "kind": "ClusterRoleBinding",
        "metadata": _meta(name),
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": name},
        "subjects": [{"apiGroup": RBAC, "kind": "Group", "name": group} for group in groups],
    }


BOOTSTRAP_ROLES = [
    _cluster_role(
        "cluster-admin",
        [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}],
    ),
    _cluster_role("system:discovery", [{"nonResourceURLs": _DISCOVERY_URLS, "verbs": ["get"]}]),
    _cluster_role("system:public-info-viewer", [{"nonResourceURLs": _PUBLIC_URLS, "verbs": ["get"]}]),
    _cluster_role(
        "system:basic-user",
        [
            {
                "apiGroups": ["authorization.k8s.io"],
                "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                "verbs": ["create"],
            },
            {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]},
        ],
    ),
]
BOOTSTRAP_BINDINGS = [
    _cluster_binding("cluster-admin", [MASTERS]),
    _cluster_binding("system:discovery", [AUTHENTICATED]),
    _cluster_binding("system:public-info-viewer", [AUTHENTICATED, UNAUTHENTICATED]),
    _cluster_binding("system:basic-user", [AUTHENTICATED]),
]
