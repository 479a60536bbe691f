#!/usr/bin/python3
"""A LoRa Basics Station CUPS server for the tests, written from Semtech's public
description of the CUPS protocol (doc.sm.tc/station, "The CUPS Protocol"), served by
python3-aiohttp, with update signatures made by python3-cryptography (someone else's
HTTP and someone else's ECDSA).

  station_cups.py --port P --log FILE --state STATE.json [--tls CERT KEY]
  station_cups.py --make-sig-key PRIVATE.pem PUBLIC.key

POST /update-info takes the router's JSON and answers the binary segments (CUPS URI,
LNS URI with 1-byte lengths; CUPS and LNS credentials, 2 bytes; signature and update,
4 bytes; little-endian), each empty unless it differs from what the router reported.
What this server hands over is read from STATE.json at each request, so a test changes
it between requests:

  {"require": "Authorization: Bearer C",   # refused (401) without this header (or one of a list)
   "cups": {"uri": ..., "trust": PEM, "crt": PEM, "key": PEM, "token": "Name: value"},
   "tc":   {"uri": ..., "trust": PEM, "crt": PEM, "key": PEM, "token": "Name: value"},
   "update": {"file": PATH, "version": "9.9.9", "sign_with": PRIVATE.pem,
              "key_crc": N (default: the CRC of sign_with's public key), "tamper": false},
   "garbage": HEX}                                # answered as is instead

A set may also be {"uri": ..., "raw": HEX}: credential bytes as given (a broken set).

A credential set is the DER of trust, certificate and key, each four zero bytes when
absent, a token in the key's place (the line and CRLF); its CRC is zlib's CRC-32. Each
request is appended to --log as one JSON line: {"t", "headers", "req", "sent": [...]}.
--make-sig-key writes a new P-256 key: its private key (PEM) and Station's sig-N.key
(the 64 bytes of the public point, X then Y). Prints "listening <port>" once it listens.
"""
import argparse
import asyncio
import json
import ssl
import struct
import sys
import time
import zlib

from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography import x509


def der_of(pem_path, kind):
    data = open(pem_path, "rb").read()
    if kind == "cert":
        return x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)
    key = serialization.load_pem_private_key(data, password=None)
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cred_blob(spec):
    if spec.get("raw") is not None:  # bytes as given (hex): a broken set
        return bytes.fromhex(spec["raw"])
    absent = b"\x00" * 4
    out = der_of(spec["trust"], "cert") if spec.get("trust") else absent
    out += der_of(spec["crt"], "cert") if spec.get("crt") else absent
    if spec.get("key"):
        out += der_of(spec["key"], "key")
    elif spec.get("token"):
        out += spec["token"].strip().encode("ascii") + b"\r\n"
    else:
        out += absent
    return out


def raw_public(private_pem):
    key = serialization.load_pem_private_key(open(private_pem, "rb").read(), password=None)
    n = key.public_key().public_numbers()
    return n.x.to_bytes(32, "big") + n.y.to_bytes(32, "big")


def make_sig_key(private_path, public_path):
    key = ec.generate_private_key(ec.SECP256R1())
    open(private_path, "wb").write(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    open(public_path, "wb").write(raw_public(private_path))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int)
    ap.add_argument("--log")
    ap.add_argument("--state")
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    ap.add_argument("--make-sig-key", nargs=2, metavar=("PRIVATE", "PUBLIC"))
    args = ap.parse_args()
    if args.make_sig_key:
        make_sig_key(*args.make_sig_key)
        return
    log = open(args.log, "a", buffering=1)

    async def update_info(request):
        req = await request.json()
        state = json.load(open(args.state))
        entry = {"t": time.time(), "headers": dict(request.headers), "req": req, "sent": []}
        need = state.get("require")
        if need:
            accepted = [[p.strip() for p in n.split(":", 1)] for n in (need if isinstance(need, list) else [need])]
            if not any(request.headers.get(name) == value for name, value in accepted):
                entry["refused"] = 401
                log.write(json.dumps(entry) + "\n")
                return web.Response(status=401, text="unauthorized")
        if state.get("garbage") is not None:  # an answer that is not CUPS's segments
            entry["sent"].append("garbage")
            log.write(json.dumps(entry) + "\n")
            return web.Response(body=bytes.fromhex(state["garbage"]), content_type="application/octet-stream")
        segments = []
        for which, width in (("cups", 1), ("tc", 1)):
            spec = state.get(which)
            uri = spec["uri"].encode() if spec and spec.get("uri") and spec["uri"] != req.get(which + "Uri") else b""
            if uri:
                entry["sent"].append(which + "Uri")
            segments.append(struct.pack("<B", len(uri)) + uri)
        for which in ("cups", "tc"):
            spec = state.get(which)
            has_cred = spec and any(spec.get(k) for k in ("trust", "crt", "key", "token", "raw"))
            blob = cred_blob(spec) if has_cred else b""
            if blob and (zlib.crc32(blob) & 0xFFFFFFFF) == req.get(which + "CredCrc"):
                blob = b""
            if blob:
                entry["sent"].append(which + "Cred")
            segments.append(struct.pack("<H", len(blob)) + blob)
        upd = state.get("update")
        sig = b""
        body = b""
        if upd and upd.get("version") != req.get("package"):
            body = open(upd["file"], "rb").read()
            signature = b""
            if upd.get("sign_with"):
                key = serialization.load_pem_private_key(open(upd["sign_with"], "rb").read(), password=None)
                signature = key.sign(body, ec.ECDSA(hashes.SHA512()))
                crc = upd.get("key_crc", zlib.crc32(raw_public(upd["sign_with"])) & 0xFFFFFFFF)
                sig = struct.pack("<I", crc) + signature
            if upd.get("tamper"):
                body = bytes([body[0] ^ 1]) + body[1:]
            entry["sent"].append("update")
        segments.append(struct.pack("<I", len(sig)) + sig)
        segments.append(struct.pack("<I", len(body)) + body)
        log.write(json.dumps(entry) + "\n")
        return web.Response(body=b"".join(segments), content_type="application/octet-stream")

    app = web.Application()
    app.router.add_post("/update-info", update_info)
    context = None
    if args.tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls[0], args.tls[1])

    async def serve():
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port, ssl_context=context).start()
        print("listening %d" % args.port, flush=True)
        await asyncio.Future()

    asyncio.run(serve())

if __name__ == "__main__":
    sys.exit(main())
