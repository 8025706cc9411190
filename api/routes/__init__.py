"""The operator API's routes, one module per concern. Each module's `router` holds no state:
routes get the app's parts through `api.deps.Parts`. `/api/...` routers are included under
the app's `/api` router, which adds the bearer check and the input checks (api/deps.py)."""
