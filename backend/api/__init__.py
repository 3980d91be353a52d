"""REST API (FastAPI): routes under /api, dependencies, middleware and error format."""
