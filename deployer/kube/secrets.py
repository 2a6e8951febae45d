"""`deployer secret set`: a Kubernetes Secret written straight to the cluster, never to git."""

from __future__ import annotations

import asyncio
import base64

from kubernetes import client

from deployer.errors import DeployError
from deployer.kube.jobs import call


async def set_secret(api: client.ApiClient, *, namespace: str, name: str, data: dict[str, bytes]) -> bool:
    """Create the Secret, or merge these keys into it (other keys stay). True if it was created."""
    encoded = {key: base64.b64encode(value).decode() for key, value in data.items()}

    def write() -> bool:
        core = client.CoreV1Api(api)
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "deployer"}},
            "type": "Opaque",
            "data": encoded,
        }
        try:
            call(core.create_namespaced_secret, namespace, body)
            return True
        except client.ApiException as exc:
            if exc.status != 409:
                raise DeployError(
                    f"the cluster refused Secret {name}: HTTP {exc.status} {exc.reason}", where=namespace
                ) from None
        call(core.patch_namespaced_secret, name, namespace, {"data": encoded})
        return False

    return await asyncio.to_thread(write)
