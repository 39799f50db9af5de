"""A Daraja token endpoint on loopback, for the benchmarks (not for the tests, which have
their own stubs in Rust): answers every exchange with a one-hour token, prints its port on
standard output, and writes how many exchanges it answered to the file named by argv[1].

    python3 scripts/daraja-stub.py CALLS_FILE
"""
import http.server
import json
import sys

calls = 0


class Daraja(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        global calls
        calls += 1
        with open(sys.argv[1], "w") as f:
            f.write(str(calls))
        body = json.dumps({"access_token": f"bench-token-{calls}", "expires_in": "3599"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Daraja)
print(server.server_address[1], flush=True)
server.serve_forever()
