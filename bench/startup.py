"""Start-up time of `flywheel serve`: a first start on an empty FLYWHEEL_HOME (converts the
embedded GGUF) against a second start on the same home (loads the cached safetensors).

    python bench/startup.py [--home DIR]

Prints JSON; `speedup` is first / second, measured in the same run.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time

import httpx

from assistant.server import free_port


def time_start(home: str) -> tuple[float, str]:
    """Seconds from launching the process to the first healthy /healthz, and the server's
    own "Loaded ..." line. Output goes to a file: a pipe nobody reads could fill and block."""
    port = free_port()
    with tempfile.TemporaryFile("w+") as log:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "flywheel.cli", "serve", "--home", home,
                                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                text=True)
        try:
            while not _healthy(port):
                if proc.poll() is not None:
                    log.seek(0)
                    raise SystemExit(f"server exited with {proc.returncode}:\n{log.read()}")
                time.sleep(0.2)
            elapsed = time.perf_counter() - started
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        log.seek(0)
        loaded = next((line for line in log.read().splitlines() if line.startswith("Loaded ")), "")
    return elapsed, loaded


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="an empty folder to use (default: a new temporary one)")
    args = parser.parse_args()
    home = args.home or tempfile.mkdtemp(prefix="flywheel-bench-")
    first, first_line = time_start(home)
    second, second_line = time_start(home)
    print(json.dumps({"first_start_s": round(first, 1), "second_start_s": round(second, 1),
                      "speedup": round(first / second, 2), "first_log": first_line,
                      "second_log": second_line}, indent=2))


if __name__ == "__main__":
    main()
