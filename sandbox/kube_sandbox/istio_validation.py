"""istiod's validating webhook (`validation.istio.io`) for the Istio kinds the deployer writes.

The rules and messages are istio/istio's pkg/config/validation (validation.go, virtualservice.go, agent/
validation.go); the refusal is what kube-apiserver makes of a webhook's denial (k8s.io/apiserver admission/
plugin/webhook/errors/statuserror.go): 403 Forbidden, `<resource> "<name>" is forbidden: admission webhook
"validation.istio.io" denied the request: configuration is invalid: <errors>`. Several errors are listed as
hashicorp/multierror prints them.
"""

from __future__ import annotations

import re
from typing import Any

from kube_sandbox.errors import ApiError
from kube_sandbox.resources import ResourceType

WEBHOOK = "validation.istio.io"
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_WILDCARD_LABEL = re.compile(r"^(\*|\*?[a-z0-9]([-a-z0-9]*[a-z0-9])?)$")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_MTLS_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")


def admit(rt: ResourceType, obj: dict[str, Any]) -> None:
    """Refuse an Istio object istiod's webhook refuses; other kinds pass."""
    check = _CHECKS.get((rt.group, rt.kind))
    if check is None:
        return
    meta = obj.get("metadata") or {}
    spec = obj.get("spec")
    errors = check(spec if isinstance(spec, dict) else {}, str(meta.get("name", "")), str(meta.get("namespace", "")))
    if errors:
        name = meta.get("name") or "Unknown"
        raise ApiError(
            403,
            "Forbidden",
            f'{rt.qualified} "{name}" is forbidden: admission webhook "{WEBHOOK}" denied the request: '
            f"configuration is invalid: {_join(errors)}",
            details={"name": name, "group": rt.group, "kind": rt.plural},
        )


def _join(errors: list[str]) -> str:
    if len(errors) == 1:
        return errors[0]
    points = "".join(f"\t* {e}\n" for e in errors)
    return f"{len(errors)} errors occurred:\n{points}\n"


# --- names ---------------------------------------------------------------------------------------------------


def wildcard_domain(domain: str) -> str | None:
    """agent.ValidateWildcardDomain: a wildcard only as the whole first label or its prefix."""
    if len(domain) > 255:
        return f"domain name {domain!r} too long (max 255)".replace("'", '"')
    if not domain:
        return "empty domain name not allowed"
    first, _, rest = domain.partition(".")
    if not _WILDCARD_LABEL.match(first):
        return f'domain name "{domain}" invalid (label "{first}" invalid)'
    return _dns1123_labels(rest, domain) if rest else None


def _dns1123_labels(rest: str, domain: str) -> str | None:
    parts = rest.split(".")
    if parts[-1].isdigit():
        return f'domain name "{domain}" invalid (top level domain "{parts[-1]}" cannot be all-numeric)'
    for i, label in enumerate(parts):
        if i == len(parts) - 1 and label == "":
            return None
        if not _DNS1123_LABEL.match(label) or len(label) > 63:
            return f'domain name "{domain}" invalid (label "{label}" invalid)'
    return None


def _subset_name(name: str) -> str | None:
    if not name:
        return "subset name cannot be empty"
    if not _DNS1123_LABEL.match(name) or len(name) > 63:
        return f"subset name is invalid: {name}"
    return None


def _labels(labels: Any) -> list[str]:
    errors = []
    for key, value in (labels or {}).items():
        if not _LABEL_KEY.match(str(key)):
            errors.append(f"invalid label key: {key!r}".replace("'", '"'))
        if not isinstance(value, str) or not _LABEL_VALUE.match(value) or len(value) > 63:
            errors.append(f"invalid label value: {value!r}".replace("'", '"'))
    return errors


def _export_to(export: Any, namespace: str) -> list[str]:
    errors: list[str] = []
    seen: set[str] = set()
    for entry in export or []:
        key = namespace if entry == "." else str(entry)
        if key in seen:
            errors.append(
                f"duplicate entries in exportTo: . and current namespace {namespace}"
                if key != entry
                else f"duplicate entries in exportTo for entry {entry}"
            )
        elif key != "*" and not _DNS1123_LABEL.match(key):
            errors.append(f"only . or * or valid DNS 1123 label is allowed as exportTo entry, got {entry}")
        seen.add(key)
    if "*" in seen and len(export or []) > 1:
        errors.append("cannot have both public (*) and non-public exportTo values for a resource")
    return errors


# --- VirtualService ------------------------------------------------------------------------------------------


def _virtual_service(spec: dict[str, Any], _: str, namespace: str) -> list[str]:
    errors: list[str] = []
    hosts = [str(h) for h in spec.get("hosts") or []]
    gateways = [str(g) for g in spec.get("gateways") or []]
    if not hosts and gateways:  # no hosts: a delegate VirtualService (istio's default allows delegation)
        errors.append("delegate virtual service must have no gateways specified")
    to_mesh = not gateways or "mesh" in gateways
    for name in gateways:
        errors += _gateway_name(name)
    for host in hosts:
        problem = wildcard_domain(host)
        if problem and not _ip(host):
            errors.append(problem)
        elif to_mesh and host == "*":
            errors.append("wildcard host * is not allowed for virtual services bound to the mesh gateway")
    for i, first in enumerate(hosts):
        errors += [f"duplicate hosts in virtual service: {first} & {h}" for h in hosts[i + 1 :] if h == first]
    if not spec.get("http") and not spec.get("tcp") and not spec.get("tls"):
        errors.append("http, tcp or tls must be provided in virtual service")
    for route in spec.get("http") or []:
        errors += _http_route(route) if isinstance(route, dict) else ["http route may not be null"]
    for route in spec.get("tcp") or []:
        errors += _tcp_route(route if isinstance(route, dict) else {})
    return errors + _export_to(spec.get("exportTo"), namespace)


def _ip(host: str) -> bool:
    return re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", host) is not None


def _gateway_name(name: str) -> list[str]:
    if name == "mesh":
        return []
    ns, slash, gateway = name.partition("/")
    if not slash:
        problem = (
            wildcard_domain(name)
            if "." in name
            else (None if _DNS1123_LABEL.match(name) else f'domain name "{name}" invalid (label "{name}" invalid)')
        )
        return [problem] if problem else []
    errors = []
    if not ns or not gateway:
        errors.append("config namespace and gateway name cannot be empty")
    if not _DNS1123_LABEL.match(ns):
        errors.append(f'invalid value for namespace: "{ns}"')
    if not _DNS1123_LABEL.match(gateway):
        errors.append(f'invalid value for gateway name: "{gateway}"')
    return errors


def _http_route(route: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    if route.get("redirect") is not None:
        if route.get("route"):
            errors.append("HTTP route cannot contain both route and redirect")
    elif not route.get("route") and route.get("delegate") is None and route.get("directResponse") is None:
        errors.append("HTTP route or redirect is required")
    for match in route.get("match") or []:
        if not isinstance(match, dict):
            continue
        for where in ("uri", "scheme", "method", "authority"):
            errors += _string_match(match.get(where), where)
        for name, rule in (match.get("headers") or {}).items():
            if rule is None:
                errors.append(f"header match {name} cannot be null")
            errors += _string_match(rule, "headers")
        for gateway in match.get("gateways") or []:
            errors += _gateway_name(str(gateway))
        errors += _labels(match.get("sourceLabels"))
        if match.get("port") is not None and not 0 < int(match["port"]) < 65536:
            errors.append(f"port number {match['port']} must be in the range 1..65535")
    return errors + _destinations(route.get("route") or [], "HTTP")


def _tcp_route(route: dict[str, Any]) -> list[str]:
    errors = [] if route.get("route") else ["TCP route is required"]
    return errors + _destinations(route.get("route") or [], "TCP")


def _destinations(routes: list[Any], _: str) -> list[str]:
    errors: list[str] = []
    total = 0
    for entry in routes:
        if not isinstance(entry, dict):
            errors.append("weight may not be nil")
            continue
        destination = entry.get("destination")
        if not isinstance(destination, dict):
            errors.append("destination is required")
        else:
            host = str(destination.get("host", ""))
            problem = f"invalid destination host {host}" if host == "*" else wildcard_domain(host)
            if problem:
                errors.append(problem)
            if destination.get("subset") is not None:
                problem = _subset_name(str(destination["subset"]))
                if problem:
                    errors.append(problem)
            number = (destination.get("port") or {}).get("number")
            if destination.get("port") is not None and not (isinstance(number, int) and 0 < number < 65536):
                errors.append(f"port number {number} must be in the range 1..65535")
        weight = int(entry.get("weight", 0) or 0)
        if weight < 0:
            errors.append(f"weight {weight} < 0")
        total += weight
    if len(routes) > 1 and total == 0:
        errors.append("total destination weight = 0")
    return errors


def _string_match(rule: Any, where: str) -> list[str]:
    if not isinstance(rule, dict):
        return []
    if "prefix" in rule and rule["prefix"] == "":
        return [f'"{where}": prefix string match should not be empty']
    if "regex" in rule:
        regex = str(rule["regex"])
        if not regex:
            return [f'"{where}": regex string match should not be empty']
        if len(regex) > 1024:
            return [f'"{where}": regex is too large, max length allowed is 1024']
        try:
            re.compile(regex)
        except re.error as exc:
            return [
                f'"{where}": {exc}; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)'
            ]
    return []


# --- DestinationRule, Gateway, PeerAuthentication -------------------------------------------------------------


def _destination_rule(spec: dict[str, Any], _: str, namespace: str) -> list[str]:
    problem = wildcard_domain(str(spec.get("host", "")))
    errors = [problem] if problem else []
    names: set[str] = set()
    for subset in spec.get("subsets") or []:
        if not isinstance(subset, dict):
            errors.append("subset may not be null")
            continue
        name = str(subset.get("name", ""))
        if name in names:
            errors.append(f"duplicate subset names: {name}")
        names.add(name)
        problem = _subset_name(name)
        errors += ([problem] if problem else []) + _labels(subset.get("labels"))
    return errors + _export_to(spec.get("exportTo"), namespace)


def _gateway(spec: dict[str, Any], name: str, _: str) -> list[str]:
    errors = [] if _DNS1123_LABEL.match(name) else [f'invalid gateway name: "{name}"']
    servers = spec.get("servers") or []
    if not servers:
        errors.append("gateway must have at least one server")
    ports: set[str] = set()
    for server in servers:
        if not isinstance(server, dict):
            errors.append("server may not be nil")
            continue
        if not server.get("hosts"):
            errors.append("server config must contain at least one host")
        for host in server.get("hosts") or []:
            namespace, _slash, pattern = str(host).rpartition("/")
            problem = wildcard_domain(pattern) if pattern != "*" else None
            if problem:
                errors.append(problem)
            if namespace not in ("", ".", "*", "~") and not _DNS1123_LABEL.match(namespace):
                errors.append(f"invalid namespace value {namespace!r} in host {host!r}".replace("'", '"'))
        port = server.get("port")
        if not isinstance(port, dict):
            errors.append("port is required")
            continue
        number = port.get("number")
        if not isinstance(number, int) or not 0 < number < 65536:
            errors.append(f"port number {number} must be in the range 1..65535")
        protocol = str(port.get("protocol", "")).upper()
        if protocol not in ("HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "TCP", "TLS", "REDIS", "MYSQL"):
            errors.append(
                f"invalid protocol {port.get('protocol')!r}, supported protocols are HTTP, HTTP2, GRPC, "
                "GRPC-WEB, MONGO, REDIS, MYSQL, TCP".replace("'", '"')
            )
        if protocol in ("HTTPS", "TLS") and not server.get("tls"):
            errors.append("server must have TLS settings for HTTPS/TLS protocols")
        port_name = str(port.get("name", ""))
        if port_name in ports:
            errors.append(f"port names in servers must be unique: duplicate name {port_name}")
        ports.add(port_name)
    return errors


def _peer_authentication(spec: dict[str, Any], _: str, __: str) -> list[str]:
    errors: list[str] = []
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    levels = spec.get("portLevelMtls")
    if not selector and levels:
        errors.append("mesh/namespace peer authentication cannot have port level mTLS")
    if levels is not None and len(levels) == 0:
        errors.append("port level mTLS, if defined, must have at least one element")
    for port, level in (levels or {}).items():
        if not str(port).isdigit() or not 0 < int(port) < 65536:
            errors.append("port must be in range 1..65535")
        errors += _mtls_mode((level or {}).get("mode"))
    errors += _mtls_mode((spec.get("mtls") or {}).get("mode"))
    return errors + _labels(selector)


def _mtls_mode(mode: Any) -> list[str]:
    if mode is None or mode in _MTLS_MODES:
        return []
    return [f'unknown value "{mode}" for enum istio.security.v1beta1.PeerAuthentication_MutualTLS_Mode']


_CHECKS = {
    ("networking.istio.io", "VirtualService"): _virtual_service,
    ("networking.istio.io", "DestinationRule"): _destination_rule,
    ("networking.istio.io", "Gateway"): _gateway,
    ("security.istio.io", "PeerAuthentication"): _peer_authentication,
}
