"""The hosted service, ``rlm serve``: many tenants' runs over HTTP, on the same session
stack as ``RLM`` and the CLI (docs/architecture.md, issue 13)."""
