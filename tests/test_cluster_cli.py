"""`rasst serve --cluster auto` as an operator runs it: its own local Ray instance, stopped
by a SIGTERM to the whole process group (as systemd sends), bounded in time.

Runs after test_cluster.py has stopped its Ray instance; skipped where one is running (the
server would join it instead of starting its own) or Ray is missing."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from conftest import ServeProcess

pytestmark = pytest.mark.ray
pytest.importorskip("ray", reason="the cluster extra (ray[serve]) is not installed")


def _ray_running() -> bool:
    r = subprocess.run(["pgrep", "-f", "gcs_server"], capture_output=True)
    return r.returncode == 0


def test_sigterm_to_the_process_group_stops_a_cluster_server(tmp_path):
    if _ray_running():
        pytest.skip("a Ray instance is running here; --cluster auto would join it")
    server = ServeProcess(
        "--cluster",
        "auto",
        "--checkpoint",
        "none",
        "--data-dir",
        str(tmp_path),
        "--address",
        "127.0.0.1:0",
        "--cluster-replica-cpus",
        "0.5",
        env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},  # loopback only
        new_session=True,  # its own process group, Ray's processes in it
    )
    p = server.proc
    try:
        server.wait_listening(180)
        t0 = time.monotonic()
        os.killpg(p.pid, signal.SIGTERM)
        # Ray's processes stop with it; the drain must not wait on them for ever.
        assert p.wait(90) == 0, server.tail()
        assert time.monotonic() - t0 < 60
        assert not any("Traceback" in line for line in server.lines), server.tail(30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
