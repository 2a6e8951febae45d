"""deployer: git push to deploy on Kubernetes."""

__version__ = "0.1.0"
