"""`make demo`: start a server on the shipped checkpoint and demo glossary, stream the demo
talk through the reference translator, print the hints step by step, stop the server cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="rasst-demo-") as data_dir:
        server = subprocess.Popen(
            [
                str(BIN / "rasst"),
                "serve",
                "--address",
                "127.0.0.1:0",
                "--data-dir",
                data_dir,
                "--admin-token",
                "demo",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        address = None
        t0 = time.time()
        for line in server.stdout:
            sys.stdout.write("  server| " + line)
            m = re.search(r"rasst listening on (\S+)", line)
            if m:
                address = m.group(1)
                break
            if time.time() - t0 > 120:
                break
        if address is None:
            server.kill()
            print("demo: the server did not start", file=sys.stderr)
            return 1
        # Keep draining the server's output so its pipe never fills and blocks it.
        tail: list[str] = []
        threading.Thread(target=lambda: tail.extend(server.stdout), daemon=True).start()
        print(
            f"\nserver ready at {address} after {time.time() - t0:.1f} s; talk: {(ROOT / 'retriever/demo/talk.txt').read_text().strip()}\n"
        )
        try:
            rc = subprocess.call(
                [
                    str(BIN / "rasst"),
                    "translate",
                    str(ROOT / "retriever/demo/talk.wav"),
                    "--server",
                    address,
                    "--glossary",
                    "demo",
                    "--lang",
                    "de",
                    "--budget-ms",
                    "100",
                ],
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
                time.sleep(0.2)
                for line in tail[-3:]:
                    print("  server| " + line.rstrip())
            except subprocess.TimeoutExpired:
                server.kill()
                print("demo: server did not drain in 30 s; killed", file=sys.stderr)
                return 1
        print(f"server stopped (exit code {server.returncode})")
        return rc


if __name__ == "__main__":
    sys.exit(main())
