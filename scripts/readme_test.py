#!/usr/bin/env python3
"""Runs the README's shell blocks the way a newcomer pastes them, in order, and fails at the
first one that does not work.

Every fenced block whose info string starts with `sh` runs:
  ```sh          pasted into one terminal: a single bash session, so variables and `cd` carry
                 from block to block (`set -euo pipefail`; `curl` fails on an HTTP error
                 status, so `curl -s` cannot hide one)
  ```sh server   the server's terminal: whatever server runs is stopped (as Ctrl-C would),
                 the block runs in a fresh bash of its own, and the next block waits until
                 127.0.0.1:8080 answers
  ```sh skip     shown, not run (it builds for half an hour or needs a machine the README
                 names but a test does not have: `cargo install`, db.internal, systemd)

What the harness gives and a newcomer does not have to: a private network namespace
(`unshare -rn`), so 127.0.0.1:8080 is the walk-through's own and no other test's; a fresh
HOME; no HAZINA_* settings in the environment except HAZINA_PROVIDER_*_URL pointing the token
broker at a stub of each provider's token endpoint (the README's placeholder keys would make
the real sandboxes answer 400). The first block runs in the clone.

Usage: python3 scripts/readme_test.py [README.md]
"""

import http.server
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

SERVER_ADDRESS = ("127.0.0.1", 8080)
STUB_PORT = 9000
DONE = "@@readme-block-done@@"
BLOCK_SECONDS = 300


def blocks(text):
    """(line, flags, body) of every fenced block whose info string starts with `sh`."""
    found = []
    for m in re.finditer(r"^```([^\n]*)\n(.*?)^```", text, re.S | re.M):
        info = m.group(1).split()
        if info and info[0] == "sh":
            line = text.count("\n", 0, m.start()) + 1
            found.append((line, set(info[1:]), m.group(2)))
    return found


class Stub(http.server.BaseHTTPRequestHandler):
    """Each provider's token endpoint, answering as its published examples do."""

    def answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # Daraja: GET /oauth/v1/generate?grant_type=client_credentials
        if self.path.startswith("/oauth/v1/generate") and self.headers.get("Authorization", "").startswith("Basic "):
            self.answer({"access_token": "c9SQxWWhmdVRlyh0zh8gZDTkubVF", "expires_in": "3599"})
        else:
            self.send_error(404)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path == "/oauth/token":  # KopoKopo
            self.answer({"access_token": "k2-stub-token", "token_type": "Bearer", "expires_in": 3600, "created_at": int(time.time())})
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


class Shell:
    """One bash session that blocks are pasted into."""

    def __init__(self, cwd, env, env_file):
        self.env_file = env_file
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.send(
            "set -euo pipefail\n"
            "curl() { command curl --fail-with-body --show-error \"$@\"; }\n"
        )

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send(self, text):
        # What the block exported is what the other terminal has too (the README says to
        # set PATH in each): the server blocks start with it.
        self.proc.stdin.write(text + f"\nenv -0 > {self.env_file}; echo; echo {DONE}\n")
        self.proc.stdin.flush()
        out = []
        deadline = time.monotonic() + BLOCK_SECONDS
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                return False, "".join(out) + "\n(timed out)"
            if line is None:
                return False, "".join(out)
            if line.strip() == DONE:
                return True, "".join(out)
            out.append(line)

    def environment(self):
        with open(self.env_file, "rb") as f:
            pairs = [p.split(b"=", 1) for p in f.read().split(b"\0") if b"=" in p]
        return {k.decode(): v.decode() for k, v in pairs}

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        stop(self.proc)


def stop(proc):
    """Ctrl-C, then wait; a process that will not stop is killed."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def answers(address):
    try:
        with socket.create_connection(address, timeout=0.5):
            return True
    except OSError:
        return False


def run(readme):
    text = open(readme, encoding="utf-8").read()
    clone = os.path.dirname(os.path.abspath(readme))
    work = tempfile.mkdtemp(prefix="hazina-readme-")
    home = os.path.join(work, "home")
    os.mkdir(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAZINA_")}
    env["HOME"] = home
    for provider in ("MPESA", "KOPOKOPO", "JPAY", "PAGAMIO"):
        for environment in ("SANDBOX", "LIVE"):
            env[f"HAZINA_PROVIDER_{provider}_{environment}_URL"] = f"http://127.0.0.1:{STUB_PORT}"

    stub = http.server.ThreadingHTTPServer(("127.0.0.1", STUB_PORT), Stub)
    threading.Thread(target=stub.serve_forever, daemon=True).start()

    shell = Shell(clone, env, os.path.join(work, "client.env"))
    server, server_log, ran, skipped = None, None, 0, 0
    try:
        for line, flags, body in blocks(text):
            where = f"{os.path.basename(readme)}:{line}"
            if "skip" in flags:
                skipped += 1
                print(f"--- {where}: skipped (marked `sh skip`)", flush=True)
                continue
            print(f"--- {where}{' (server)' if 'server' in flags else ''}", flush=True)
            if "server" in flags:
                stop(server)
                for _ in range(300):
                    if not answers(SERVER_ADDRESS):
                        break
                    time.sleep(0.1)
                server_log = os.path.join(work, f"server-{line}.log")
                server = subprocess.Popen(
                    ["bash", "--noprofile", "--norc", "-euo", "pipefail", "-c", body],
                    cwd=clone,
                    env=shell.environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=open(server_log, "w"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                deadline = time.monotonic() + 120
                while not answers(SERVER_ADDRESS):
                    if server.poll() is not None or time.monotonic() > deadline:
                        print(open(server_log).read())
                        print(f"FAIL: {where}: the server did not start", file=sys.stderr)
                        return 1
                    time.sleep(0.1)
                ran += 1
                continue
            ok, out = shell.send(body)
            sys.stdout.write(out)
            if not ok:
                if server_log:
                    print(f"--- the server's output ({server_log}):")
                    print(open(server_log).read()[-4000:])
                print(f"FAIL: {where}: this block stopped with an error (above)", file=sys.stderr)
                return 1
            ran += 1
    finally:
        shell.close()
        stop(server)
        stub.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    print(f"README: {ran} blocks ran verbatim, {skipped} skipped", flush=True)
    return 0


def main():
    readme = sys.argv[1] if len(sys.argv) > 1 else "README.md"
    if os.environ.get("HAZINA_TEST_README_NETNS") != "1":
        # A network namespace of our own: 127.0.0.1:8080 belongs to this run alone.
        env = dict(os.environ, HAZINA_TEST_README_NETNS="1")
        cmd = ["unshare", "-rn", "sh", "-c", 'PATH="$PATH:/usr/sbin:/sbin" ip link set lo up && exec "$0" "$@"', sys.executable, os.path.abspath(__file__), readme]
        return subprocess.call(cmd, env=env)
    return run(readme)


if __name__ == "__main__":
    sys.exit(main())
