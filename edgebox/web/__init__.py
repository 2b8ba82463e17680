"""The web console: a Starlette app on hypercorn's trio worker, run in the engine's nursery (`server.serve_console`).

It shows cameras with their live frames, alarms as they happen, and workflows, with forms that call the same
`Node` methods as the gRPC service; it also serves /metrics, /healthz and /readyz. Static assets ship in
`static/`, the login page in `templates/`. No domain logic lives here.
"""
