"""The aiohttp sidecar: the older server's endpoints, admin, health and metrics."""
