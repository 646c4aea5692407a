#!/usr/bin/python3
"""A stand-in for `corral server` that keeps the server contract MultiNodeCluster codes against, so the
kit's tests check the kit (start, serving line, API reached from the host, a node's death seen by the
others through etcd, the whole cluster stopped and started) without the real server.

`fake_corral_server.py server --node NAME --address IP --store etcd://H:P[,...] --data-dir DIR
--listen IP:PORT [--node-lease-ttl SECS]`: the node holds an etcd lease (kept alive by a thread, and
taken again after it expired) on /corral-fake/alive/NAME and marks itself known at /corral-fake/known/NAME; GET
/v1/nodes lists every known node, `ready` while its lease lives, `down` after; PUT /v1/settings/* is 200.
"""
import argparse
import http.server
import json
import os
import signal
import subprocess
import sys
import threading


def etcdctl(endpoints, *args):
    out = subprocess.run(
        ["etcdctl", "--endpoints", endpoints, "--command-timeout", "3s", *args],
        env={**os.environ, "ETCDCTL_API": "3"},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["server"])
    parser.add_argument("--node", required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--node-lease-ttl", type=int, default=3)
    a = parser.parse_args()
    endpoints = a.store.removeprefix("etcd://")
    etcdctl(endpoints, "put", f"/corral-fake/known/{a.node}", a.address)

    stopping = threading.Event()

    def keep_alive():
        # Like a real node: keep the lease alive, and take a new one when it expired (after a partition).
        lease = None
        while not stopping.is_set():
            try:
                if lease is None or "expired" in etcdctl(endpoints, "lease", "keep-alive", "--once", lease):
                    lease = etcdctl(endpoints, "lease", "grant", str(a.node_lease_ttl)).split()[1]
                    etcdctl(endpoints, "put", "--lease", lease, f"/corral-fake/alive/{a.node}", a.address)
            except subprocess.CalledProcessError as err:
                if "not found" in (err.stderr or "") or "expired" in (err.stderr or ""):
                    lease = None
            stopping.wait(a.node_lease_ttl / 4)

    keeper = threading.Thread(target=keep_alive, daemon=True)
    keeper.start()

    class Api(http.server.BaseHTTPRequestHandler):
        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path != "/v1/nodes":
                return self.reply(404, {"error": "not found"})
            alive = etcdctl(endpoints, "get", "--prefix", "--keys-only", "/corral-fake/alive/").split()
            known = etcdctl(endpoints, "get", "--prefix", "/corral-fake/known/").split()
            nodes = []
            for key, address in zip(known[::2], known[1::2]):
                name = key.rsplit("/", 1)[1]
                ready = f"/corral-fake/alive/{name}" in alive
                nodes.append({"name": name, "address": address, "state": "ready" if ready else "down"})
            self.reply(200, nodes)

        def do_PUT(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.reply(200 if self.path.startswith("/v1/settings/") else 404, {})

        def log_message(self, *args):
            pass

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host, port = a.listen.rsplit(":", 1)
    server = http.server.ThreadingHTTPServer((host, int(port)), Api)
    print(f"corral server of node {a.node} serving http://{a.listen}", flush=True)
    try:
        server.serve_forever()
    finally:
        # No etcdctl child of the keeper may outlive the server: a stopped node runs nothing.
        stopping.set()
        keeper.join(timeout=10)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
