"""What the tests that start real servers share: free ports, shell commands run with a
services environment script sourced, and polling with a bound."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_sourced(
    env_script: str, command: str, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """Run `command` in bash after `source <env_script>` (e.g. scripts/env.sh); assert it
    succeeded, showing the ends of its output otherwise."""
    result = subprocess.run(
        ["bash", "-c", f"source {env_script} && {command}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def wait_for(what: str, check, timeout: float = 300):
    """Poll `check()` until it returns something truthy (a generous bound, not a timing)."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(1)
    return value
