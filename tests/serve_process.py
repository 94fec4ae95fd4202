"""`python -m engine.serve` as a subprocess for the tests that need a real server process (signals, restarts, the
command line's own output)."""
import re
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_serve(*args: str) -> tuple[subprocess.Popen, str]:
    """engine.serve ARGS on a free loopback port (--port 0); (process, base url "http://127.0.0.1:N") once it
    prints its "serving on" line. Its stderr is drained afterwards (a full pipe would block it); the caller kills
    the process."""
    p = subprocess.Popen([sys.executable, "-m", "engine.serve", "--port", "0", *args], cwd=ROOT,
                         stderr=subprocess.PIPE, text=True)
    line = ""
    while "serving on" not in line:
        line = p.stderr.readline()
        assert line, f"the server exited with status {p.wait()}"
    threading.Thread(target=p.stderr.read, daemon=True).start()
    return p, re.search(r"serving on (http://127\.0\.0\.1:\d+)/", line).group(1)
