#!/usr/bin/env python3
"""A stand-in for the `corral` binary in the manager's tests (like Longhorn's engine simulator).

`replica serve --dir D [--size S] --listen HOST:PORT`: creates D, accepts (and closes) TCP
connections on the port, runs until killed.
`engine serve --volume V --size S --replica ADDR... --nbd HOST:PORT --listen HOST:PORT`: accepts
NBD connections (and closes them) and serves the engine's HTTP/JSON control API from memory:
info, replicas (add/remove), snapshots (create/list/remove/purge), revert, expand. A replica whose
address was passed or added is RW. Every request is appended to $FAKE_ENGINE_LOG if set.
"""
import http.server
import json
import os
import socket
import sys
import threading
import time

args = sys.argv[1:]


def opt(name):
    return [args[i + 1] for i, a in enumerate(args) if a == name and i + 1 < len(args)]


def listen(hostport):
    host, port = hostport.rsplit(":", 1)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    s.listen(16)

    def loop():
        while True:
            c, _ = s.accept()
            c.close()

    threading.Thread(target=loop, daemon=True).start()


if args[:2] == ["replica", "serve"]:
    os.makedirs(opt("--dir")[0], exist_ok=True)
    listen(opt("--listen")[0])
    print("listening on tcp://" + opt("--listen")[0], flush=True)
    while True:
        time.sleep(1)
elif args[:2] == ["engine", "serve"]:
    state = {
        "size": int(opt("--size")[0]),
        "replicas": [{"address": a, "mode": "RW", "rebuildProgress": 100} for a in opt("--replica")],
        "snapshots": [],
    }
    lock = threading.Lock()
    listen(opt("--nbd")[0])

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def reply(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def body(self):
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n) or b"{}")

        def log(self, method):
            path = os.environ.get("FAKE_ENGINE_LOG")
            if path:
                with open(path, "a") as f:
                    f.write(method + " " + self.path + "\n")

        def do_GET(self):
            self.log("GET")
            with lock:
                if self.path == "/v1/info":
                    return self.reply(200, {"volume": opt("--volume")[0], "size": state["size"],
                                            "frontend": "nbd://" + opt("--nbd")[0], "clients": 0})
                if self.path == "/v1/replicas":
                    return self.reply(200, state["replicas"])
                if self.path == "/v1/snapshots":
                    return self.reply(200, state["snapshots"])
            self.reply(404, {"kind": "notFound", "op": "get", "message": "no such path"})

        def do_POST(self):
            self.log("POST")
            b = self.body()
            with lock:
                if self.path == "/v1/replicas/add":
                    state["replicas"].append({"address": b["address"], "mode": "RW", "rebuildProgress": 100})
                    return self.reply(200, {})
                if self.path == "/v1/replicas/remove":
                    state["replicas"] = [r for r in state["replicas"] if r["address"] != b["address"]]
                    return self.reply(200, {})
                if self.path == "/v1/snapshots":
                    name = b.get("name") or "snap-%d" % len(state["snapshots"])
                    state["snapshots"].append({"name": name, "parent": None, "children": [], "removed": False,
                                               "userCreated": True, "created": "", "size": 0,
                                               "labels": b.get("labels") or {}})
                    return self.reply(200, {"name": name})
                if self.path == "/v1/snapshots/purge":
                    state["snapshots"] = [s for s in state["snapshots"] if not s["removed"]]
                    return self.reply(200, {})
                if self.path == "/v1/revert":
                    if not any(s["name"] == b["name"] for s in state["snapshots"]):
                        return self.reply(404, {"kind": "notFound", "op": "revert", "message": "no snapshot " + b["name"]})
                    return self.reply(200, {})
                if self.path == "/v1/expand":
                    if b["size"] < state["size"]:
                        return self.reply(400, {"kind": "invalidArgument", "op": "expand", "message": "smaller"})
                    state["size"] = b["size"]
                    return self.reply(200, {})
            self.reply(404, {"kind": "notFound", "op": "post", "message": "no such path"})

        def do_DELETE(self):
            self.log("DELETE")
            with lock:
                name = self.path.rsplit("/", 1)[-1]
                for s in state["snapshots"]:
                    if s["name"] == name:
                        s["removed"] = True
                        return self.reply(200, {})
            self.reply(404, {"kind": "notFound", "op": "delete", "message": "no snapshot " + name})

    host, port = opt("--listen")[0].rsplit(":", 1)
    print("engine control on " + opt("--listen")[0], flush=True)
    http.server.ThreadingHTTPServer((host, int(port)), Handler).serve_forever()
else:
    print("fake corral: unsupported arguments", args, file=sys.stderr)
    sys.exit(2)
