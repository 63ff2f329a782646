"""A small HTTP client for `tfzoo serve` (and TF Serving): requests, a server process, a load run.

Used by the serving tests and `benchmarks/bench_serving.py`; standard library only.
"""

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request


def request(url, body=None, method=None, timeout=60):
    """`(status, parsed JSON)` for a GET (no body) or a POST of `body` (a dict, or raw bytes)."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode("utf-8")
    req = urllib.request.Request(url, data=data, method=method or ("GET" if data is None else "POST"),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw)
        except ValueError:
            return error.code, {"raw": raw.decode("utf-8", "replace")}


class ServerProcess:
    """`tfzoo serve ROOT` on 127.0.0.1 and a free port, as a subprocess; a context manager."""

    def __init__(self, root, log_path, extra_args=(), startup_timeout=180):
        self.root, self.log_path = root, log_path
        self.extra_args, self.startup_timeout = list(extra_args), startup_timeout
        self.process, self.url = None, None

    def __enter__(self):
        self.log = open(self.log_path, "w+", encoding="utf-8")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tfzoo.cli", "serve", self.root, "--host", "127.0.0.1", "--port", "0",
             *self.extra_args],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        try:
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"tfzoo serve exited with {self.process.returncode}:\n{self.output()}")
                match = re.search(r"listening on (http://\S+)", self.output())
                if match:
                    self.url = match.group(1)
                    return self
                time.sleep(0.2)
            raise RuntimeError(f"tfzoo serve did not start in {self.startup_timeout} s:\n{self.output()}")
        except BaseException:
            self.stop()
            raise

    def output(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as file:
            return file.read()

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.close()

    def __exit__(self, *exc_info):
        self.stop()


def run_load(url, bodies, threads=8, timeout=60):
    """POSTs every body in `bodies` to `url` from `threads` client threads.

    Returns `(results, latencies, seconds)`: `results[i]` is `(status, JSON)` for
    `bodies[i]` (None if the request raised), `latencies[i]` its seconds.
    """
    results, latencies = [None] * len(bodies), [None] * len(bodies)
    lock, next_index = threading.Lock(), [0]

    def worker():
        while True:
            with lock:
                index = next_index[0]
                next_index[0] += 1
            if index >= len(bodies):
                return
            started = time.perf_counter()
            try:
                results[index] = request(url, bodies[index], timeout=timeout)
            except Exception as error:  # counted as lost
                results[index] = (None, {"error": repr(error)})
            latencies[index] = time.perf_counter() - started

    started = time.perf_counter()
    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return results, latencies, time.perf_counter() - started
