"""The code that runs inside the sandbox (stdlib only).

Installed on the host as ``rlm_sandbox`` so that both ends share one definition of
the functions model code sees (``api``) and of the wire protocol; copied as is into
the Docker image, where it runs as the container's process.
"""
