"""Exec the wheel's tritonserver on a model repository in the foreground (PID 1 of the cpu image).

python docker/cpu_entrypoint.py /models [extra tritonserver flags]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from triton_models.server import prepare_backend_dir, server_environment, tritonserver_binary  # noqa: E402


def main(argv: list[str]) -> None:
    """Replace this process with tritonserver serving ``argv[0]`` on all interfaces, ports 8000-8002."""
    repo = argv[0] if argv else "/models"
    args = [
        str(tritonserver_binary()),
        f"--model-repository={repo}",
        f"--backend-directory={prepare_backend_dir(Path.home() / '.triton_backends')}",
        "--model-control-mode=none",
        "--strict-readiness=true",
        "--exit-on-error=true",
        "--allow-gpu-metrics=false",
        *argv[1:],
    ]
    os.execve(args[0], args, server_environment())


if __name__ == "__main__":
    main(sys.argv[1:])
