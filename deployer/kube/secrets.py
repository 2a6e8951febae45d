"""`deployer secret set`: a Kubernetes Secret written straight to the cluster, never to git."""

from __future__ import annotations

import base64

from deployer.errors import DeployError
from deployer.kube.client import SECRETS, ApiError, KubeClient


async def set_secret(api: KubeClient, *, namespace: str, name: str, data: dict[str, bytes]) -> bool:
    """Create the Secret, or merge these keys into it (other keys stay). True if it was created."""
    encoded = {key: base64.b64encode(value).decode() for key, value in data.items()}
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "deployer"}},
        "type": "Opaque",
        "data": encoded,
    }
    try:
        await api.create(SECRETS, namespace, body)
        return True
    except ApiError as exc:
        if exc.status != 409:
            raise DeployError(f"the cluster refused Secret {name}: {exc.message}", where=namespace) from None
    try:
        await api.patch(SECRETS, namespace, name, {"data": encoded})
    except ApiError as exc:
        raise DeployError(f"the cluster refused Secret {name}: {exc.message}", where=namespace) from None
    return False
