"""`deployer serve`: the git remote (SSH and smart HTTP), the pre-receive hook's server side, /healthz and
/metrics, in one asyncio process. Submodules load on use: the hook (`deployer.server.hook`) stays light."""
