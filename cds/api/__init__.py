"""The HTTP edge: small routers, their dependencies, and the mapping of errors to status."""
