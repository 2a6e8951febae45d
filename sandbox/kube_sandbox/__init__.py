"""A strict local Kubernetes API server with simulated controllers (DESIGN.md section 7).

A separate program: it imports nothing from the rest of the deployer.
"""

from deployer.sandbox.server import Sandbox, kubeconfig, serve

__all__ = ["Sandbox", "kubeconfig", "serve"]
