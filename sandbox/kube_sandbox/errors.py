"""Errors as the apiserver reports them: a Status object with code, reason, message and details."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An HTTP error answered with a `Status` body shaped as kube-apiserver's."""

    def __init__(self, code: int, reason: str, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        """The Status in metav1.Status's field order (kind, apiVersion, metadata, status, message, reason,
        details, code), details in StatusDetails' (name, group, kind, uid, causes, retryAfterSeconds), empty
        fields left out as their `omitempty` tags say (k8s.io/apimachinery pkg/apis/meta/v1/types.go)."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            order = ("name", "group", "kind", "uid", "causes", "retryAfterSeconds")
            body["details"] = {key: self.details[key] for key in order if self.details.get(key)}
        body["code"] = self.code
        return body


def not_found(qualified: str, name: str, group: str, plural: str) -> ApiError:
    return ApiError(
        404, "NotFound", f'{qualified} "{name}" not found', details={"name": name, "group": group, "kind": plural}
    )


def conflict(qualified: str, name: str, group: str, plural: str, why: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified} "{name}": {why}',
        details={"name": name, "group": group, "kind": plural},
    )


def invalid(kind: str, name: str, group: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """422 Invalid; causes are (reason, field, message), e.g. ("FieldValueRequired", "spec.x", "Required value")."""
    text = ", ".join(f"{field}: {message}" if field else message for _, field, message in causes)
    count = f"[{text}]" if len(causes) > 1 else text
    qualified = f"{kind}.{group}" if group else kind
    return ApiError(
        422,
        "Invalid",
        f'{qualified} "{name}" is invalid: {count}',
        details={
            "name": name,
            "group": group,
            "kind": kind,
            "causes": [{"reason": r, "message": m, "field": f} for r, f, m in causes],
        },
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)
