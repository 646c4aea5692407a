#!/usr/bin/python3
"""A pipelined, multi-connection NBD workload driven by libnbd (Debian python3-libnbd).

Run by corral-testkit (src/nbd/workload.rs), which writes the plan and checks the results: this script only
issues requests and reports what the server acknowledged. Usage: nbd_workload.py PLAN.json

Plan (JSON): uri, connections, depth (requests in flight over all connections), data (a file the write
payloads are taken from), ops (a list of {"op": "write"|"zero"|"trim"|"flush"|"read", "offset", "len",
"data": offset in the data file, "fua", "drain": a flush that waits for all earlier requests}), disconnect (send NBD_CMD_DISC at the end, default true), repeat (cycle through ops until stdin is closed), pass_shift.

Requests are issued in plan order. A request that overlaps one still in flight waits for it, so the bytes
after any prefix of the stream are those of applying that prefix in order. In repeat mode, pass p takes a
write's payload from data[(d + p * pass_shift) % (len(data) - len + 1)], so every pass writes new bytes.

Output, one JSON object a line, flushed as it happens (so a SIGKILL of the server leaves a true record):
  {"event": "connected", ...negotiated facts}
  {"event": "issue", "seq": N, "op": "flush"}            (flushes only: a flush covers what was acked before)
  {"event": "ack", "seq": N, "op": ..., "ok": true, "sha256": hex (reads)} or "ok": false, "error": ...
  {"event": "done", "issued": N, "acked": N, "failed": N, "max_in_flight": N}
"""

import hashlib
import json
import mmap
import os
import select
import sys

import nbd


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    with open(sys.argv[1]) as f:
        plan = json.load(f)
    ops = plan["ops"]
    depth = plan.get("depth", 32)
    repeat = plan.get("repeat", False)
    pass_shift = plan.get("pass_shift", 0)
    data = b""
    if plan.get("data"):
        with open(plan["data"], "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(f.fileno()).st_size else b""

    handles = []
    for _ in range(plan.get("connections", 1)):
        h = nbd.NBD()
        # libnbd's defaults: fixed newstyle, NBD_OPT_GO, structured replies requested.
        h.connect_uri(plan["uri"])
        handles.append(h)
    first = handles[0]
    emit({
        "event": "connected",
        "connections": len(handles),
        "structured_replies": all(h.get_structured_replies_negotiated() for h in handles),
        "can_multi_conn": all(h.can_multi_conn() for h in handles),
        "can_flush": first.can_flush(),
        "can_fua": first.can_fua(),
        "size": first.get_size(),
        "protocol": first.get_protocol(),
    })

    in_flight = {}  # (handle index, cookie) -> (seq, op, offset, end, buffer)
    dead = set()
    seq = 0
    acked = failed = max_in_flight = 0
    stop = not repeat and not ops
    stdin_open = repeat
    next_handle = 0

    def retire(key, error):
        nonlocal acked, failed
        s, op, _, _, buf = in_flight.pop(key)
        event = {"event": "ack", "seq": s, "op": op["op"], "ok": error is None}
        if error is not None:
            failed += 1
            event["error"] = error
        else:
            acked += 1
            if op["op"] == "read":
                event["sha256"] = hashlib.sha256(buf.to_bytearray()).hexdigest()
        emit(event)

    def overlaps(offset, end):
        return any(o < end and offset < e for (_, _, o, e, _) in in_flight.values())

    def issue(op, pass_no):
        nonlocal seq, next_handle
        live = [i for i in range(len(handles)) if i not in dead]
        if not live:
            return False
        i = live[next_handle % len(live)]
        next_handle += 1
        h = handles[i]
        kind = op["op"]
        offset = op.get("offset", 0)
        length = op.get("len", 0)
        flags = nbd.CMD_FLAG_FUA if op.get("fua") else 0
        buf = None
        if kind == "flush":
            emit({"event": "issue", "seq": seq, "op": "flush"})
        try:
            if kind == "write":
                start = op["data"]
                if pass_shift:
                    start = (start + pass_no * pass_shift) % (len(data) - length + 1)
                cookie = h.aio_pwrite(bytes(data[start:start + length]), offset, flags=flags)
            elif kind == "zero":
                cookie = h.aio_zero(length, offset, flags=flags)
            elif kind == "trim":
                cookie = h.aio_trim(length, offset, flags=flags)
            elif kind == "flush":
                cookie = h.aio_flush()
            elif kind == "read":
                buf = nbd.Buffer(length)
                cookie = h.aio_pread(buf, offset)
            else:
                raise ValueError("unknown op %r" % kind)
        except nbd.Error as e:
            dead.add(i)
            emit({"event": "ack", "seq": seq, "op": kind, "ok": False, "error": "issue: %s" % e})
            seq += 1
            return True
        end = offset + length if kind != "flush" else offset
        in_flight[(i, cookie)] = (seq, op, offset, end, buf)
        seq += 1
        return True

    def pump(block):
        """Moves bytes for every live handle; retires completed commands."""
        rlist, wlist = [], []
        fds = {}
        for i, h in enumerate(handles):
            if i in dead:
                continue
            if h.aio_is_dead() or h.aio_is_closed():
                # The server went away (a test's SIGKILL): what is in flight on it fails below.
                dead.add(i)
                continue
            fd = h.aio_get_fd()
            fds[fd] = i
            direction = h.aio_get_direction()
            if direction & nbd.AIO_DIRECTION_READ:
                rlist.append(fd)
            if direction & nbd.AIO_DIRECTION_WRITE:
                wlist.append(fd)
        if stdin_open:
            rlist.append(sys.stdin.fileno())
        readable, writable, _ = select.select(rlist, wlist, [], 1.0 if block else 0)
        for fd in readable:
            if fd == sys.stdin.fileno():
                continue
            try:
                handles[fds[fd]].aio_notify_read()
            except nbd.Error:
                dead.add(fds[fd])
        for fd in writable:
            try:
                handles[fds[fd]].aio_notify_write()
            except nbd.Error:
                dead.add(fds[fd])
        for key in list(in_flight):
            i, cookie = key
            if i in dead:
                retire(key, "connection lost")
                continue
            try:
                if handles[i].aio_command_completed(cookie):
                    retire(key, None)
            except nbd.Error as e:
                retire(key, str(e))
                if handles[i].aio_is_dead() or handles[i].aio_is_closed():
                    dead.add(i)
        return sys.stdin.fileno() in readable

    index = 0
    while True:
        if stdin_open and select.select([sys.stdin.fileno()], [], [], 0)[0]:
            if not os.read(sys.stdin.fileno(), 4096):
                stdin_open = False
                stop = True
        if len(dead) == len(handles):
            for key in list(in_flight):
                retire(key, "connection lost")
            break
        issued_one = False
        while not stop and len(in_flight) < depth:
            op = ops[index % len(ops)]
            pass_no = index // len(ops)
            kind = op["op"]
            # Otherwise a flush overlaps nothing: it is pipelined with the writes, and covers those acked
            # before it was issued (the "issue" line marks that point in the output).
            # A draining flush waits until every earlier request was answered (a filesystem's barrier).
            if kind == "flush" and op.get("drain") and in_flight:
                break
            if kind != "flush" and overlaps(op.get("offset", 0), op.get("offset", 0) + op.get("len", 0)):
                break
            if not issue(op, pass_no):
                stop = True
                break
            issued_one = True
            index += 1
            if not repeat and index >= len(ops):
                stop = True
        max_in_flight = max(max_in_flight, len(in_flight))
        if stop and not in_flight:
            break
        pump(block=not issued_one)

    for i, h in enumerate(handles):
        # "disconnect": false leaves like a crashed client (no NBD_CMD_DISC): the sockets just close.
        if i not in dead and plan.get("disconnect", True):
            try:
                h.shutdown()
            except nbd.Error:
                pass
    emit({"event": "done", "issued": seq, "acked": acked, "failed": failed, "max_in_flight": max_in_flight})


if __name__ == "__main__":
    main()
