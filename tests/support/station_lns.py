#!/usr/bin/python3
"""A LoRa Basics Station LNS for the tests: the router-info and muxs endpoints,
written from Semtech's public description of the LNS protocol (doc.sm.tc/station,
"The LNS Protocol"), served by python3-websockets (someone else's WebSocket).

  station_lns.py --port P --log FILE [--mode normal|mute] [--tls CERT KEY [--client-ca CA]]

- /router-info: takes {"router": <eui>}, answers {"router", "muxs", "uri"} pointing
  at /traffic/<eui> on the same server.
- /traffic/<eui>: expects `version`, sends an EU868 `router_config` (with MuxTime),
  then answers every `timesync` request (txtime echoed, gpstime now) unless
  --mode mute (then it answers none: nothing the gateway sent is ever proven read).
- Every connection and every text message received is appended to --log as one
  JSON line: {"t", "path", "event": "connect", "headers"} or {"t", "path", "msg"}.
- Each line written to stdin is sent as is, as one text message, to the newest
  /traffic connection (dnmsg, malformed JSON, unknown msgtypes...); a line
  starting "BINARY:" sends the rest as a binary message.
- --muxs-uri URI: router-info points there instead (another host, ws:// from wss://).
- --upchannels HZ,HZ,...: the router_config carries this channel plan (`upchannels`).
- --read-delay-ms N: a slow LNS or link, N ms after each message read.
- --require "Name: value": an upgrade without this header is refused (401), as an
  LNS refuses a wrong token.
- Prints "listening <port>" once it listens.
"""
import argparse
import asyncio
import http
import json
import os
import ssl
import sys
import time

import websockets

GPS_EPOCH_UNIX = 315964800
LEAP_SECONDS = 18

ROUTER_CONFIG = {
    "msgtype": "router_config",
    "NetID": None,
    "JoinEui": None,
    "region": "EU863",
    "hwspec": "sx1301/1",
    "freq_range": [863000000, 870000000],
    "DRs": [[12, 125, 0], [11, 125, 0], [10, 125, 0], [9, 125, 0], [8, 125, 0],
            [7, 125, 0], [7, 250, 0], [0, 0, 0], [-1, 0, 0], [-1, 0, 0], [-1, 0, 0],
            [-1, 0, 0], [-1, 0, 0], [-1, 0, 0], [-1, 0, 0], [-1, 0, 0]],
    "max_eirp": 16.0,
    "nocca": True,
    "nodc": True,
    "nodwell": True,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--mode", default="normal", choices=["normal", "mute"])
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    ap.add_argument("--client-ca")
    ap.add_argument("--read-delay-ms", type=int, default=0,
                    help="a slow LNS (or link): wait this long after each message read")
    ap.add_argument("--require", help="refuse upgrades without this header (Name: value)")
    ap.add_argument("--muxs-uri", help="what router-info answers instead of this server's /traffic")
    ap.add_argument("--upchannels", help="a channel plan in router_config: Hz,Hz,...")
    args = ap.parse_args()
    log = open(args.log, "a", buffering=1)
    scheme = "wss" if args.tls else "ws"
    traffic = []

    def record(entry):
        entry["t"] = time.time()
        log.write(json.dumps(entry) + "\n")

    async def router_info(ws, path):
        text = await ws.recv()
        req = json.loads(text)
        record({"path": path, "msg": req})
        eui = str(req.get("router"))
        await ws.send(json.dumps({
            "router": eui,
            "muxs": "muxs-::0",
            "uri": args.muxs_uri or "%s://127.0.0.1:%d/traffic/%s" % (scheme, args.port, eui),
        }))

    async def muxs(ws, path):
        traffic.append(ws)
        try:
            async for text in ws:
                try:
                    msg = json.loads(text)
                except ValueError:
                    msg = {"unparsed": text}
                record({"path": path, "msg": msg})
                if args.read_delay_ms:
                    await asyncio.sleep(args.read_delay_ms / 1000)
                kind = msg.get("msgtype")
                if kind == "version":
                    cfg = dict(ROUTER_CONFIG, MuxTime=time.time())
                    if args.upchannels:
                        cfg["upchannels"] = [[int(f), 0, 5] for f in args.upchannels.split(",")]
                    await ws.send(json.dumps(cfg))
                elif kind == "timesync" and args.mode == "normal":
                    gps_us = int((time.time() - GPS_EPOCH_UNIX + LEAP_SECONDS) * 1e6)
                    await ws.send(json.dumps({"msgtype": "timesync", "txtime": msg.get("txtime"),
                                              "gpstime": gps_us, "MuxTime": time.time()}))
        finally:
            if ws in traffic:
                traffic.remove(ws)

    async def handler(ws, path=None):
        path = path or ws.path
        record({"path": path, "event": "connect", "headers": dict(ws.request_headers)})
        try:
            if path.endswith("/router-info"):
                await router_info(ws, path)
            elif path.startswith("/traffic/"):
                await muxs(ws, path)
        except websockets.ConnectionClosed:
            pass

    async def check_header(path, request_headers):
        # websockets' legacy server (Debian 12's 10.x): None lets the upgrade go on.
        if not args.require:
            return None
        name, value = [p.strip() for p in args.require.split(":", 1)]
        if request_headers.get(name) == value:
            return None
        record({"path": path, "event": "refused", "headers": dict(request_headers)})
        return (http.HTTPStatus.UNAUTHORIZED, [], b"unauthorized\n")

    pending = [b""]

    def from_stdin():
        # Everything readable now, split into lines (a readline would leave lines in
        # Python's buffer that no readiness event announces).
        chunk = os.read(sys.stdin.fileno(), 65536)
        if not chunk:
            asyncio.get_event_loop().remove_reader(sys.stdin.fileno())
            return
        lines = (pending[0] + chunk).split(b"\n")
        pending[0] = lines.pop()
        for line in lines:
            if traffic and line:
                # Sent in order: each send is queued behind the one before.
                if line.startswith(b"BINARY:"):
                    asyncio.ensure_future(traffic[-1].send(line[len(b"BINARY:"):]))
                else:
                    asyncio.ensure_future(traffic[-1].send(line.decode()))

    async def serve():
        context = None
        if args.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(args.tls[0], args.tls[1])
            if args.client_ca:
                context.load_verify_locations(args.client_ca)
                context.verify_mode = ssl.CERT_REQUIRED
        asyncio.get_event_loop().add_reader(sys.stdin.fileno(), from_stdin)
        async with websockets.serve(handler, "127.0.0.1", args.port, ssl=context,
                                    process_request=check_header):
            print("listening %d" % args.port, flush=True)
            await asyncio.Future()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
