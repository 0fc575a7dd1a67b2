"""Entry point of the sandbox container: ``python3 -m rlm_sandbox``."""

from .runner import main

main()
