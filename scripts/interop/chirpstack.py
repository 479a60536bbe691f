#!/usr/bin/env python3
"""berrygw's backlog replay against a real ChirpStack v4 network server.

Run by scripts/interop-chirpstack, which installs what this needs (redis,
mosquitto, a venv with chirpstack-api, grpcio and paho-mqtt), makes the
temporary directory `--work` and removes it afterwards. Everything here runs
on loopback ports picked at random and stops when this program ends
(normally, on an error, or on SIGTERM/SIGINT):

  redis-server      no persistence
  mosquitto         anonymous, unlimited queues (so the broker never drops)
  ChirpStack        sqlite in --work, region eu868 only, MQTT gateway backend
                    and MQTT integration (JSON) on that mosquitto; every other
                    setting is ChirpStack's default (200 ms deduplication...)
  a TCP relay       in this process: berrygw -> relay -> mosquitto; the outage
                    is the relay aborting its connections and refusing new ones
  berrygw           sim radio with DEVICES ABP devices (keys drawn per run and
                    registered in ChirpStack through its gRPC API)

Counts come from what each party says itself: the sim radio's debug log
(uplinks sent), the broker (berrygw's event/up, ChirpStack's command/down,
berrygw's event/ack, ChirpStack's integration events up and log) and
ChirpStack's log (refusals that make no integration event).
"""

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import grpc
import paho.mqtt.client as mqtt
from chirpstack_api import api, common, gw

GATEWAY_ID = "0016c001ff10a235"
REGION = "eu868"
KINDS = ["water_meter", "river_level", "waste_fill", "lighting_cabinet"]
# Downlinks by how long after its uplink's reception it reached the broker: the
# device listens 1 s (RX1) and 2 s (RX2) after its uplink (ABP rx1 delay 1).
DOWNLINK_AGES = [(1000, "<= 1 s (RX1 ahead)"), (2000, "1-2 s (RX2 ahead)"), (None, "> 2 s (both windows gone)")]
PROGRESS_EVERY_S = 30
# The journal backlog is not back to 0 this long after every uplink received before
# the reopening was published: live uplinks are held back; stop waiting.
HELD_WAIT_S = 30

# The gateway backend part of ChirpStack's configuration/region_eu868.toml
# (used when that file is not found next to the binary's source tree); the
# rest of a region's settings have defaults for EU868.
REGION_EU868 = """
[[regions]]
  id = "eu868"
  description = "EU868"
  common_name = "EU868"

  [regions.gateway]
    force_gws_private = false

    [regions.gateway.backend]
      enabled = "mqtt"

      [regions.gateway.backend.mqtt]
        topic_prefix = "eu868"
        share_name = "chirpstack"
        server = "tcp://localhost:1883"
        username = ""
        password = ""
        qos = 0
        clean_session = false
        client_id = ""
        keep_alive_interval = "30s"

  [regions.network]
    installation_margin = 10
    rx_window = 0
    rx1_delay = 1
    rx1_dr_offset = 0
    rx2_dr = 0
    rx2_frequency = 869525000
    rx2_prefer_on_rx1_dr_lt = 0
    rx2_prefer_on_link_budget = false
    downlink_tx_power = -1
    adr_disabled = false
    min_dr = 0
    max_dr = 5

    [[regions.network.extra_channels]]
      frequency = 867100000
      min_dr = 0
      max_dr = 5

    [[regions.network.extra_channels]]
      frequency = 867300000
      min_dr = 0
      max_dr = 5

    [[regions.network.extra_channels]]
      frequency = 867500000
      min_dr = 0
      max_dr = 5

    [[regions.network.extra_channels]]
      frequency = 867700000
      min_dr = 0
      max_dr = 5

    [[regions.network.extra_channels]]
      frequency = 867900000
      min_dr = 0
      max_dr = 5
"""


class Failed(Exception):
    """A step failed; the message says which and why."""


class Interrupted(Exception):
    """SIGTERM or SIGINT."""


def on_signal(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


def now_ms():
    return int(time.time() * 1000)


def say(msg=""):
    print(msg, flush=True)


def parse_time_ms(text):
    """RFC 3339 (any number of fraction digits, Z or an offset) to unix ms, as a float."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?", text)
    if not m:
        return None
    base = dt.datetime.fromisoformat(m.group(1))
    tz = m.group(3) or "Z"
    if tz == "Z":
        base = base.replace(tzinfo=dt.timezone.utc)
    else:
        sign = 1 if tz[0] == "+" else -1
        hh, mm = int(tz[1:3]), int(tz[-2:])
        base = base.replace(tzinfo=dt.timezone(sign * dt.timedelta(hours=hh, minutes=mm)))
    frac = m.group(2) or "0"
    return base.timestamp() * 1000 + int(frac) / 10 ** len(frac) * 1000


# ---------------------------------------------------------------- ports, processes

_ports = set()


def free_port():
    """A TCP port on 127.0.0.1, below the ephemeral range (so no outgoing connection takes it meanwhile)."""
    for _ in range(1000):
        port = random.randint(20000, 31999)
        if port in _ports:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        _ports.add(port)
        return port
    raise Failed("no free port on 127.0.0.1")


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Procs:
    """Child processes, each in its own session (the terminal's Ctrl-C reaches only us), logs in work."""

    def __init__(self, work):
        self.work = work
        self.items = {}

    def start(self, name, argv, env=None):
        exe = shutil.which(argv[0]) or argv[0]
        log = open(self.work / f"{name}.log", "ab")
        p = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        self.items[name] = p
        # For the shell wrapper's trap, in case this process dies without stopping them.
        with open(self.work / "pids", "a") as f:
            f.write(f"{p.pid} {os.path.realpath(exe)}\n")
        return p

    def log_tail(self, name, lines=15):
        try:
            text = (self.work / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join("    " + line for line in text[-lines:])

    def check(self, *names):
        for name in names or list(self.items):
            p = self.items.get(name)
            if p is not None and p.poll() is not None:
                raise Failed(f"{name} exited (status {p.returncode}); the end of its log:\n{self.log_tail(name)}")

    def stop(self, name, timeout=10):
        p = self.items.pop(name, None)
        if p is None or p.poll() is not None:
            return None
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            return p.wait()

    def stop_all(self):
        for name in reversed(list(self.items)):
            self.stop(name)


def wait_for(what, timeout, probe, procs=None, watch=()):
    deadline = time.monotonic() + timeout
    while True:
        if procs is not None:
            procs.check(*watch)
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


# ---------------------------------------------------------------- the relay


class Relay:
    """TCP relay berrygw -> mosquitto, in its own thread. Closed: every relayed
    connection is aborted (RST) and new ones are accepted and aborted at once."""

    def __init__(self, port, upstream):
        self.port, self.upstream = port, upstream
        self.is_open = True
        self.accepted = 0
        self.refused = 0
        self.conns = set()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self.thread.start()
        if not self.ready.wait(10) or self.error:
            raise Failed(f"relay on port {port}: {self.error or 'did not start'}")

    def _run(self):
        asyncio.set_event_loop(self.loop)
        try:
            self.server = self.loop.run_until_complete(
                asyncio.start_server(self._client, "127.0.0.1", self.port, reuse_address=True)
            )
        except OSError as e:
            self.error = e
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()

    async def _client(self, reader, writer):
        if not self.is_open:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        pair = (writer, up_writer)
        self.conns.add(pair)

        async def pipe(src, dst):
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        return
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                return

        tasks = [asyncio.ensure_future(pipe(reader, up_writer)), asyncio.ensure_future(pipe(up_reader, writer))]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        for w in pair:
            w.transport.abort()
        self.conns.discard(pair)

    async def _set(self, is_open):
        self.is_open = is_open
        if not is_open:
            for pair in list(self.conns):
                for w in pair:
                    w.transport.abort()

    def set_open(self, is_open):
        asyncio.run_coroutine_threadsafe(self._set(is_open), self.loop).result(5)

    def stop(self):
        if self.loop.is_running():
            async def shut():
                self.server.close()
                await self._set(False)
                others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in others:
                    t.cancel()
                await asyncio.gather(*others, return_exceptions=True)

            try:
                asyncio.run_coroutine_threadsafe(shut(), self.loop).result(5)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


# ---------------------------------------------------------------- what the broker carries


def phy_data_up(phy):
    """(dev_addr hex, FCnt 16 bits, confirmed) of a LoRaWAN data uplink, else None."""
    if len(phy) < 12:
        return None
    mtype = phy[0] >> 5
    if mtype not in (2, 4):
        return None
    return phy[1:5][::-1].hex(), int.from_bytes(phy[6:8], "little"), mtype == 4


def phy_data_down(phy):
    """(dev_addr, FCntDown 16 bits, confirmed, ACK bit, carries MAC commands) of a data downlink, else None."""
    if len(phy) < 12:
        return None
    mtype = phy[0] >> 5
    if mtype not in (3, 5):
        return None
    f_opts_len = phy[5] & 0x0F
    has_port = len(phy) > 8 + f_opts_len + 4
    mac = f_opts_len > 0 or (has_port and phy[8 + f_opts_len] == 0)
    return phy[1:5][::-1].hex(), int.from_bytes(phy[6:8], "little"), mtype == 5, bool(phy[5] & 0x20), mac


class Recorder:
    """Subscribes to everything of interest on mosquitto, keeps each message with its arrival time."""

    TOPICS = [
        (f"{REGION}/gateway/+/event/+", 1),
        (f"{REGION}/gateway/+/command/+", 1),
        ("application/+/device/+/event/+", 1),
    ]

    def __init__(self, port):
        self.lock = threading.Lock()
        self.messages = []  # (arrival ms, topic, payload)
        self.up_received = {}  # berrygw_seq -> berrygw_received_ms
        self.accepted = set()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"interop-recorder-{os.getpid()}",
            clean_session=True,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise Failed("the recorder could not subscribe on mosquitto")

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties):
        if not reason_code.is_failure:
            client.subscribe(self.TOPICS)

    def _on_message(self, _client, _userdata, msg):
        at = now_ms()
        payload = bytes(msg.payload)
        with self.lock:
            self.messages.append((at, msg.topic, payload))
            # Live counters for the progress lines.
            if msg.topic.endswith("/event/up"):
                if msg.topic.startswith("application/"):
                    try:
                        e = json.loads(payload)
                        self.accepted.add((e.get("devAddr"), e.get("fCnt", 0)))
                    except ValueError:
                        pass
                else:
                    try:
                        md = gw.UplinkFrame.FromString(payload).rx_info.metadata
                        self.up_received[md.get("berrygw_seq")] = int(md.get("berrygw_received_ms", "0"))
                    except Exception:  # noqa: BLE001 - counted at the end
                        pass

    def snapshot(self):
        with self.lock:
            return list(self.messages)

    def counts(self):
        with self.lock:
            return len(self.up_received), len(self.accepted)

    def published_before(self, ms):
        """Uplinks published (first time) that berrygw received before `ms`."""
        with self.lock:
            return sum(1 for r in self.up_received.values() if r < ms)

    def stop(self):
        self.client.loop_stop()
        try:
            self.client.disconnect()
        except Exception:  # noqa: BLE001
            pass


# ---------------------------------------------------------------- ChirpStack


def find_region_file(chirpstack_bin):
    """configuration/region_eu868.toml of the source tree the binary was built in, if any."""
    candidates = []
    if os.environ.get("CHIRPSTACK_REGION_FILE"):
        candidates.append(Path(os.environ["CHIRPSTACK_REGION_FILE"]))
    for parent in Path(chirpstack_bin).resolve().parents:
        candidates.append(parent / "chirpstack" / "configuration" / "region_eu868.toml")
        candidates.append(parent / "configuration" / "region_eu868.toml")
    for c in candidates:
        if c.is_file():
            return c
    return None


def chirpstack_config(work, chirpstack_bin, redis_port, mqtt_port, api_port):
    d = work / "chirpstack"
    d.mkdir()
    (d / "chirpstack.toml").write_text(
        f"""# Written by scripts/interop/chirpstack.py: ChirpStack's defaults but for these.
[logging]
level = "info"

[sqlite]
path = "sqlite://{d}/chirpstack.sqlite"

[redis]
servers = ["redis://127.0.0.1:{redis_port}/"]

[network]
enabled_regions = ["{REGION}"]

[api]
bind = "127.0.0.1:{api_port}"
secret = "{secrets.token_urlsafe(32)}"

[integration]
enabled = ["mqtt"]

[integration.mqtt]
server = "tcp://127.0.0.1:{mqtt_port}/"
json = true
"""
    )
    source = find_region_file(chirpstack_bin)
    region = source.read_text() if source else REGION_EU868
    region, n = re.subn(
        r'(?m)^(\s*)server\s*=\s*"tcp://[^"]*"', rf'\1server = "tcp://127.0.0.1:{mqtt_port}"', region, count=1
    )
    if n != 1 or not re.search(r'(?m)^\s*topic_prefix\s*=\s*"eu868"', region):
        raise Failed(f"{source}: no MQTT gateway backend server / eu868 topic_prefix to set")
    (d / f"region_{REGION}.toml").write_text(region)
    return d, source


class ChirpStackApi:
    def __init__(self, port):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.md = []

    def login(self):
        try:
            r = api.InternalServiceStub(self.channel).Login(api.LoginRequest(email="admin", password="admin"), timeout=5)
        except grpc.RpcError:
            return False
        self.md = [("authorization", f"Bearer {r.jwt}")]
        return True

    def call(self, stub, method, request):
        try:
            return getattr(stub(self.channel), method)(request, metadata=self.md, timeout=15)
        except grpc.RpcError as e:
            raise Failed(f"ChirpStack API {stub.__name__[:-4]}.{method}: {e.code().name}: {e.details()}") from None

    def provision(self, devices, interval_ms):
        tenants = self.call(api.TenantServiceStub, "List", api.ListTenantsRequest(limit=10))
        if tenants.result:
            tenant_id = tenants.result[0].id
        else:
            tenant_id = self.call(
                api.TenantServiceStub,
                "Create",
                api.CreateTenantRequest(tenant=api.Tenant(name="berrygw-interop", can_have_gateways=True)),
            ).id
        self.call(
            api.GatewayServiceStub,
            "Create",
            api.CreateGatewayRequest(
                gateway=api.Gateway(gateway_id=GATEWAY_ID, name="berrygw", tenant_id=tenant_id, stats_interval=30)
            ),
        )
        profile_id = self.call(
            api.DeviceProfileServiceStub,
            "Create",
            api.CreateDeviceProfileRequest(
                device_profile=api.DeviceProfile(
                    tenant_id=tenant_id,
                    name="berrygw-sim-abp",
                    region=common.Region.EU868,
                    region_config_id=REGION,
                    mac_version=common.MacVersion.LORAWAN_1_0_3,
                    reg_params_revision=common.RegParamsRevision.RP002_1_0_1,
                    adr_algorithm_id="default",
                    supports_otaa=False,
                    abp_rx1_delay=1,
                    abp_rx1_dr_offset=0,
                    abp_rx2_dr=0,
                    abp_rx2_freq=869525000,
                    uplink_interval=max(1, -(-interval_ms // 1000)),
                )
            ),
        ).id
        app_id = self.call(
            api.ApplicationServiceStub,
            "Create",
            api.CreateApplicationRequest(application=api.Application(name="berrygw-interop", tenant_id=tenant_id)),
        ).id
        for d in devices:
            self.call(
                api.DeviceServiceStub,
                "Create",
                api.CreateDeviceRequest(
                    device=api.Device(
                        dev_eui=d["dev_eui"],
                        name=d["name"],
                        application_id=app_id,
                        device_profile_id=profile_id,
                        skip_fcnt_check=False,
                    )
                ),
            )
            self.call(
                api.DeviceServiceStub,
                "Activate",
                api.ActivateDeviceRequest(
                    device_activation=api.DeviceActivation(
                        dev_eui=d["dev_eui"],
                        dev_addr=d["dev_addr"],
                        app_s_key=d["app_s_key"],
                        nwk_s_enc_key=d["nwk_s_key"],
                        s_nwk_s_int_key=d["nwk_s_key"],
                        f_nwk_s_int_key=d["nwk_s_key"],
                        f_cnt_up=0,
                        n_f_cnt_down=0,
                        a_f_cnt_down=0,
                    )
                ),
            )
        return app_id


# ---------------------------------------------------------------- berrygw


def berrygw_config(work, args, devices, relay_port, http_port):
    state = work / "berrygw"
    lines = [
        "# Written by scripts/interop/chirpstack.py",
        "[gateway]",
        f'id = "{GATEWAY_ID}"',
        f'state_dir = "{state}"',
        "stats_interval_secs = 30",
        "report_interval_secs = 10",
        "",
        "[journal]",
        'backend = "sqlite"',
        "",
        "[http]",
        f'listen = "127.0.0.1:{http_port}"',
        "",
        "[api]",
        f'socket = "{state}/api.sock"',
        "",
        "[radio]",
        'kind = "sim"',
        "",
        "[radio.sim]",
        "",
    ]
    for d in devices:
        lines += [
            "[[radio.sim.devices]]",
            f'name = "{d["name"]}"',
            f'kind = "{d["kind"]}"',
            f'dev_addr = "{d["dev_addr"]}"',
            f'nwk_s_key = "{d["nwk_s_key"]}"',
            f'app_s_key = "{d["app_s_key"]}"',
            f"interval_ms = {args.interval_ms}",
            f"confirmed = {'true' if d['confirmed'] else 'false'}",
            "",
        ]
    lines += [
        "[sinks.chirpstack]",
        f'server = "mqtt://127.0.0.1:{relay_port}"',
        f'topic_prefix = "{REGION}"',
        'format = "protobuf"',
        "reconnect_min_ms = 500",
        "reconnect_max_ms = 2000",
    ]
    if args.replay_gap_ms is not None:
        lines.append(f"replay_gap_ms = {args.replay_gap_ms}")
    if args.replay_rate is not None:
        lines.append(f"replay_rate = {args.replay_rate}")
    path = work / "berrygw.toml"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def berrygw_status(http_port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/status", timeout=2) as r:
            status = json.load(r)
    except (OSError, ValueError):
        return None
    sink = next((s for s in status.get("sinks", []) if s.get("name") == "chirpstack"), None)
    return status, sink


def sim_radio_log(path, names):
    """(unix ms, dev_addr, fcnt) of every data uplink the sim radio logged (debug level)."""
    pattern = re.compile(r"^(\S+)\s+DEBUG\b.*sim radio: uplink device=(\S+) fcnt=(\d+)")
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = pattern.match(line)
        if m and m.group(2) in names:
            t = parse_time_ms(m.group(1))
            if t is not None:
                out.append((t, names[m.group(2)], int(m.group(3))))
    return out


# ---------------------------------------------------------------- counting


def save_messages(path, messages):
    """Everything the recorder saw, one JSON line each (decoded), for a look with --keep."""
    kinds = {"/event/up": gw.UplinkFrame, "/event/ack": gw.DownlinkTxAck, "/command/down": gw.DownlinkFrame}
    from google.protobuf import json_format

    with open(path, "w") as f:
        for at, topic, payload in messages:
            body = None
            if topic.startswith("application/"):
                try:
                    body = json.loads(payload)
                except ValueError:
                    pass
            else:
                kind = next((k for s, k in kinds.items() if topic.endswith(s)), None)
                if kind is not None:
                    try:
                        body = json_format.MessageToDict(kind.FromString(payload))
                    except Exception:  # noqa: BLE001 - kept as hex below
                        pass
            f.write(json.dumps(dict(at=at, topic=topic, body=body if body is not None else payload.hex())) + "\n")


ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOG_CAUSES = [
    ("FCntUp already updated", "FCntUp already updated"),
    ("Zero items in collect set", "Zero items in collect set"),
    ("None of the device-sessions for dev_addr resulted in valid MIC", "invalid MIC"),
    ("No device-session exists for dev_addr", "no device session"),
    ("database is locked", "sqlite: database is locked"),
]


def chirpstack_log(path):
    """ChirpStack's log: gateway event/up messages it received, and error/warning lines by cause."""
    received = []
    problems = []  # (ms, cause)
    for raw in path.read_text(errors="replace").splitlines():
        line = ANSI.sub("", raw)
        parts = line.split(None, 2)
        if len(parts) < 3:
            continue
        t = parse_time_ms(parts[0])
        if t is None:
            continue
        level = parts[1]
        if "Message received from gateway" in line and "/event/up" in line:
            received.append(t)
            continue
        cause = next((name for needle, name in LOG_CAUSES if needle in line), None)
        if cause is None and level in ("ERROR", "WARN"):
            # Other problems, grouped by their message without ids and numbers.
            text = parts[2]
            text = re.sub(r"^\S*\{[^}]*\}\S*\s*", "", text)  # span prefix
            text = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|[0-9a-f]{8,}|\d+", "#", text)
            cause = f"{level}: {text[:90]}"
        if cause is not None:
            problems.append((t, cause))
    return received, problems


def summary(values):
    """min, median, max (seconds, 0.1 s) of a list, or None."""
    if not values:
        return None
    return dict(min_s=round(min(values), 1), median_s=round(statistics.median(values), 1), max_s=round(max(values), 1))


def ranges(numbers):
    """'3,5-9,12' from numbers."""
    out = []
    for n in sorted(set(numbers)):
        if out and n == out[-1][1] + 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in out)


def analyse(args, devices, messages, radio_log, cs_received, cs_problems, times, relay, app_id):
    t_cut, t_reopen, t_drained, t_end = times["cut"], times["reopen"], times["drained"], times["end"]

    def phase_of(ms):
        if ms < t_cut:
            return "up"
        if ms < t_reopen:
            return "outage"
        return "after"

    def period_of(ms):
        if ms < t_cut:
            return "up"
        if ms < t_reopen:
            return "outage"
        if t_drained is None or ms < t_drained:
            return "drain"
        return "tail"

    eui_to_addr = {d["dev_eui"]: d["dev_addr"] for d in devices}
    addrs = {d["dev_addr"] for d in devices}

    # berrygw's uplinks, first publication of each berrygw_seq, in seq order.
    first = {}
    publications = 0
    for at, topic, payload in messages:
        if not (topic.startswith(f"{REGION}/gateway/") and topic.endswith("/event/up")):
            continue
        up = gw.UplinkFrame.FromString(payload)
        publications += 1
        seq = int(up.rx_info.metadata.get("berrygw_seq", "0"))
        if seq in first:
            continue
        first[seq] = (at, up)
    published = {}  # (dev_addr, full fcnt) -> dict
    by_context = {}
    high = defaultdict(lambda: (0, -1))  # dev_addr -> (wraps, last 16-bit fcnt)
    for seq in sorted(first):
        at, up = first[seq]
        parsed = phy_data_up(up.phy_payload)
        if parsed is None or parsed[0] not in addrs:
            continue
        addr, f16, confirmed = parsed
        wraps, last = high[addr]
        if last >= 0 and f16 < last and last - f16 > 0x8000:
            wraps += 1
        high[addr] = (wraps, f16)
        fcnt = (wraps << 16) | f16
        received_ms = int(up.rx_info.metadata.get("berrygw_received_ms", "0"))
        gw_time_ns = up.rx_info.gw_time.seconds * 10**9 + up.rx_info.gw_time.nanos
        item = dict(seq=seq, published_ms=at, received_ms=received_ms, gw_time_ns=gw_time_ns, confirmed=confirmed)
        published[(addr, fcnt)] = item
        by_context[bytes(up.rx_info.context)] = (addr, fcnt)

    # The radio: its debug log, else (older binaries, other log formats) what was published.
    sent = {}
    if radio_log:
        for t, addr, fcnt in radio_log:
            sent[(addr, fcnt)] = t
        radio_source = "sim radio debug log"
    else:
        sent = {k: v["received_ms"] for k, v in published.items()}
        radio_source = "published uplinks (no sim radio debug lines in berrygw's log)"

    # ChirpStack's integration events.
    accepted = {}
    log_events = defaultdict(list)  # code -> [(addr, fcnt)]
    integration_other = Counter()
    for at, topic, payload in messages:
        if not topic.startswith("application/"):
            continue
        event = topic.rsplit("/", 1)[-1]
        try:
            e = json.loads(payload)
        except ValueError:
            integration_other["undecodable"] += 1
            continue
        if event == "up":
            key = (e.get("devAddr", ""), int(e.get("fCnt", 0)))
            accepted.setdefault(key, dict(at=at, event=e))
        elif event == "log":
            addr = eui_to_addr.get(e.get("deviceInfo", {}).get("devEui", ""), "?")
            ctx = e.get("context", {}) or {}
            fcnt = int(ctx["f_cnt_up"]) if "f_cnt_up" in ctx else None
            log_events[e.get("code", "UNKNOWN")].append((addr, fcnt))
        else:
            integration_other[event] += 1

    # Per phase (by the radio's receive time).
    phases = ["up", "outage", "after"]
    publish_delay = {p: [] for p in phases}
    for item in published.values():
        publish_delay[phase_of(item["received_ms"])].append((item["published_ms"] - item["received_ms"]) / 1000)
    rows = {p: Counter() for p in phases}
    for key, t in sent.items():
        rows[phase_of(t)]["sent"] += 1
    reset_keys = set(log_events.get("UPLINK_F_CNT_RESET", []))
    retrans_keys = set(log_events.get("UPLINK_F_CNT_RETRANSMISSION", []))
    refused_keys = []
    for key, item in published.items():
        row = rows[phase_of(item["received_ms"])]
        row["published"] += 1
        if key in accepted:
            row["accepted"] += 1
        else:
            row["refused"] += 1
            refused_keys.append(key)
            if key in reset_keys:
                row["F_CNT_RESET"] += 1
            elif key in retrans_keys:
                row["F_CNT_RETRANSMISSION"] += 1
            else:
                row["no_event"] += 1
    duplicates_refused = sum(1 for k in retrans_keys if k in accepted)
    not_published = [k for k in sent if k not in published]
    # Those of the last seconds before berrygw was stopped may just not have left yet.
    not_published_at_stop = sum(1 for k in not_published if sent[k] > t_end - 2000)
    accepted_unknown = [k for k in accepted if k not in published]

    # ChirpStack's log, by when the line was written.
    periods = ["up", "outage", "drain", "tail"]
    log_counts = defaultdict(Counter)
    for t, cause in cs_problems:
        if times["started"] <= t <= t_end + 5000:  # not ChirpStack's own start-up or shutdown
            log_counts[cause][period_of(t)] += 1
    received_counts = Counter(period_of(t) for t in cs_received)

    # Event time: ChirpStack's `time` against berrygw's receive time.
    timing = {p: Counter() for p in phases}
    late_deltas = {p: [] for p in phases}
    for key, acc in accepted.items():
        item = published.get(key)
        if item is None:
            continue
        p = phase_of(item["received_ms"])
        e = acc["event"]
        t = parse_time_ms(e.get("time", "")) if e.get("time") else None
        if t is not None and abs(t - item["gw_time_ns"] / 1e6) < 0.01:
            timing[p]["original"] += 1
        else:
            timing[p]["other"] += 1
            if t is not None:
                late_deltas[p].append((t - item["received_ms"]) / 1000)
        rx = (e.get("rxInfo") or [{}])[0]
        gw_t = parse_time_ms(rx.get("gwTime", "")) if rx.get("gwTime") else None
        if gw_t is not None and abs(gw_t - item["gw_time_ns"] / 1e6) < 0.01:
            timing[p]["gw_time_kept"] += 1
        if rx.get("metadata", {}).get("berrygw_received_ms") == str(item["received_ms"]):
            timing[p]["metadata_kept"] += 1

    # Downlinks and berrygw's acks.
    acks = {}
    for at, topic, payload in messages:
        if topic.startswith(f"{REGION}/gateway/") and topic.endswith("/event/ack"):
            a = gw.DownlinkTxAck.FromString(payload)
            # Per item (RX1, RX2): e.g. TOO_LATE/IGNORED = RX1 refused, RX2 not tried.
            acks[a.downlink_id] = "/".join(gw.TxAckStatus.Name(i.status) for i in a.items) or "no items"
    def no_ack(at):
        if at >= t_end:
            return "no ack (berrygw stopped)"
        if t_cut <= at < t_reopen:
            return "no ack (sent during the outage)"
        return "no ack"

    downlinks = []
    for at, topic, payload in messages:
        if not (topic.startswith(f"{REGION}/gateway/") and topic.endswith("/command/down")):
            continue
        d = gw.DownlinkFrame.FromString(payload)
        item0 = d.items[0] if d.items else None
        ctx = bytes(item0.tx_info.context) if item0 else b""
        key = by_context.get(ctx)
        info = phy_data_down(item0.phy_payload) if item0 else None
        up = published.get(key) if key else None
        age = (at - up["received_ms"]) if up else None
        downlinks.append(
            dict(
                downlink_id=d.downlink_id,
                at=at,
                uplink=key,
                uplink_phase=phase_of(up["received_ms"]) if up else None,
                age_ms=age,
                age_class=None if age is None else next(label for limit, label in DOWNLINK_AGES if limit is None or age <= limit),
                ack_bit=info[3] if info else None,
                mac_commands=info[4] if info else None,
                ack=acks.get(d.downlink_id, no_ack(at)),
            )
        )

    # Drain.
    outage_items = [v for v in published.values() if t_cut <= v["received_ms"] < t_reopen]
    last_outage_published = max((v["published_ms"] for v in outage_items), default=None)
    first_outage_published = min((v["published_ms"] for v in outage_items), default=None)
    drain = dict(
        backlog_left_when_stopped=times.get("backlog_left"),
        outage_uplinks=len(outage_items),
        backlog_zero_after_s=None if t_drained is None else round((t_drained - t_reopen) / 1000, 1),
        first_outage_uplink_published_after_s=None
        if first_outage_published is None
        else round((first_outage_published - t_reopen) / 1000, 1),
        last_outage_uplink_published_after_s=None
        if last_outage_published is None
        else round((last_outage_published - t_reopen) / 1000, 1),
    )
    if first_outage_published is not None:
        drain["outage_publish_spread_ms"] = last_outage_published - first_outage_published
    if first_outage_published is not None and last_outage_published > first_outage_published:
        drain["replay_rate_per_s"] = round(
            (len(outage_items) - 1) * 1000 / (last_outage_published - first_outage_published), 1
        )

    # Per device.
    per_device = []
    for d in devices:
        a = d["dev_addr"]
        ks = [k for k in published if k[0] == a]
        per_device.append(
            dict(
                name=d["name"],
                dev_addr=a,
                confirmed=d["confirmed"],
                sent=sum(1 for k in sent if k[0] == a),
                published=len(ks),
                accepted=sum(1 for k in ks if k in accepted),
                highest_fcnt=max((k[1] for k in ks), default=None),
                outage_fcnts_accepted=ranges(
                    k[1] for k in ks if k in accepted and t_cut <= published[k]["received_ms"] < t_reopen
                ),
                outage_fcnts_refused=ranges(
                    k[1] for k in ks if k not in accepted and t_cut <= published[k]["received_ms"] < t_reopen
                ),
            )
        )

    return dict(
        phases=[
            dict(
                phase=p,
                sent_by_radio=rows[p]["sent"],
                published_by_berrygw=rows[p]["published"],
                accepted_by_chirpstack=rows[p]["accepted"],
                refused=rows[p]["refused"],
                publish_delay_s=summary(publish_delay[p]),
                refused_by_cause=dict(
                    UPLINK_F_CNT_RESET=rows[p]["F_CNT_RESET"],
                    UPLINK_F_CNT_RETRANSMISSION=rows[p]["F_CNT_RETRANSMISSION"],
                    no_event=rows[p]["no_event"],
                ),
            )
            for p in phases
        ],
        radio_source=radio_source,
        sent_not_published=len(not_published),
        sent_not_published_in_last_2s=not_published_at_stop,
        berrygw_publications=publications,
        berrygw_duplicate_publications=publications - len(first),
        accepted_not_published=len(accepted_unknown),
        duplicates_refused_as_retransmission=duplicates_refused,
        integration_log_events={code: len(v) for code, v in log_events.items()},
        integration_other_events=dict(integration_other),
        chirpstack_received_event_up={p: received_counts[p] for p in periods},
        chirpstack_log={cause: {p: c[p] for p in periods} for cause, c in sorted(log_counts.items())},
        drain=drain,
        event_time={
            p: dict(
                accepted=timing[p]["original"] + timing[p]["other"],
                time_is_receive_time=timing[p]["original"],
                time_is_other=timing[p]["other"],
                other_minus_receive=summary(late_deltas[p]),
                rx_info_gw_time_kept=timing[p]["gw_time_kept"],
                rx_info_metadata_kept=timing[p]["metadata_kept"],
            )
            for p in phases
        },
        downlinks=dict(
            total=len(downlinks),
            for_uplinks_of_phase={p: sum(1 for d in downlinks if d["uplink_phase"] == p) for p in phases},
            unmatched=sum(1 for d in downlinks if d["uplink"] is None),
            with_ack_bit=sum(1 for d in downlinks if d["ack_bit"]),
            with_mac_commands=sum(1 for d in downlinks if d["mac_commands"]),
            by_uplink_age={
                label: dict(
                    count=len(ds),
                    age=summary([d["age_ms"] / 1000 for d in ds]),
                    berrygw_acks=dict(Counter(d["ack"] for d in ds)),
                )
                for label in [lbl for _, lbl in DOWNLINK_AGES]
                for ds in [[d for d in downlinks if d["age_class"] == label]]
            },
        ),
        relay=dict(connections_relayed=relay.accepted, connections_refused=relay.refused),
        devices=per_device,
    )


# ---------------------------------------------------------------- report


def table(rows, header, align=None):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    align = align or ["<"] + [">"] * (len(header) - 1)
    fmt = "  ".join(f"{{:{a}{w}}}" for a, w in zip(align, widths))
    out = [fmt.format(*header), "  ".join("-" * w for w in widths)]
    out += [fmt.format(*[str(c) for c in r]) for r in rows]
    return "\n".join(out)


def report(args, res, times):
    labels = {
        "up": f"up ({args.up_secs} s)",
        "outage": f"outage ({args.outage_secs} s)",
        "after": "after (drain + tail)",
    }
    rows = []
    total = Counter()
    for p in res["phases"]:
        c = p["refused_by_cause"]
        r = [
            labels[p["phase"]],
            p["sent_by_radio"],
            p["published_by_berrygw"],
            p["accepted_by_chirpstack"],
            p["refused"],
            c["UPLINK_F_CNT_RESET"],
            c["UPLINK_F_CNT_RETRANSMISSION"],
            c["no_event"],
        ]
        rows.append(r)
        for i, v in enumerate(r[1:]):
            total[i] += v
    rows.append(["total"] + [total[i] for i in range(7)])
    say()
    say(
        f"berrygw {res['versions']['berrygw']} -> ChirpStack {res['versions']['chirpstack']}; "
        f"{args.devices} devices every {args.interval_ms} ms; replay pacing: {args.pacing}"
    )
    say()
    say(
        table(
            rows,
            ["phase (by receive time)", "sent by radio", "published", "accepted", "refused",
             "F_CNT_RESET", "RETRANSMISSION", "no event"],
        )
    )
    say("  refused = published but no integration event/up; by cause: ChirpStack's event/log for that FCnt,")
    say("  or none (dropped without an event: see its log below).")
    notes = []
    if res["sent_not_published"]:
        notes.append(
            f"{res['sent_not_published']} sent by the radio but never published "
            f"({res['sent_not_published_in_last_2s']} of them in the 2 s before berrygw was stopped)"
        )
    if res["berrygw_duplicate_publications"]:
        notes.append(
            f"{res['berrygw_duplicate_publications']} duplicate publications by berrygw (same berrygw_seq), "
            f"{res['duplicates_refused_as_retransmission']} refused as retransmission"
        )
    if res["accepted_not_published"]:
        notes.append(f"{res['accepted_not_published']} accepted uplinks not seen published")
    for n in notes:
        say(f"  note: {n}")

    say()
    periods = ["up", "outage", "drain", "tail"]
    log_rows = [["event/up received (ChirpStack log)"] + [res["chirpstack_received_event_up"][p] for p in periods]]
    for cause, c in res["chirpstack_log"].items():
        log_rows.append([cause] + [c[p] for p in periods])
    say(table(log_rows, ["ChirpStack log, lines written during", "up", "outage", "drain", "tail"]))
    say("  drain: from the relay reopening to berrygw's backlog 0; tail: after that, until berrygw stopped")
    if res["integration_log_events"]:
        say("  integration event/log: " + ", ".join(f"{k} {v}" for k, v in sorted(res["integration_log_events"].items())))

    d = res["drain"]
    say()
    spread = (d["last_outage_uplink_published_after_s"] or 0) - (d["first_outage_uplink_published_after_s"] or 0)
    if d["outage_uplinks"] == 0:
        out = "no uplinks received during the outage"
    elif spread < 1:
        out = (
            f"the {d['outage_uplinks']} outage uplinks published {d['first_outage_uplink_published_after_s']} s "
            f"after it, all within {d['outage_publish_spread_ms']} ms"
        )
    else:
        out = (
            f"the {d['outage_uplinks']} outage uplinks published from {d['first_outage_uplink_published_after_s']} s "
            f"to {d['last_outage_uplink_published_after_s']} s after it ({d.get('replay_rate_per_s')} uplinks/s)"
        )
    if d["backlog_zero_after_s"] is not None:
        say(f"Drain: relay reopened -> journal backlog 0 after {d['backlog_zero_after_s']} s; {out}")
    else:
        left = times.get("backlog_left") or {}
        say(f"Drain: {out}; the journal backlog did NOT return to 0 "
            f"(still {left.get('records', '?')} records, oldest {left.get('oldest_age_secs', '?')} s, "
            f"when the run stopped waiting)")

    say("Publication delay (received by the radio -> first published by berrygw):")
    for p in res["phases"]:
        if p["publish_delay_s"]:
            say(f"  {labels[p['phase']]}: median {p['publish_delay_s']['median_s']} s, max {p['publish_delay_s']['max_s']} s")
    say("Event time (ChirpStack's `time` vs berrygw's receive time, accepted uplinks):")
    for p in ["up", "outage", "after"]:
        e = res["event_time"][p]
        if not e["accepted"]:
            continue
        line = f"  {labels[p]}: {e['time_is_receive_time']}/{e['accepted']} carry the receive time"
        if e["time_is_other"]:
            s = e["other_minus_receive"]
            line += f"; {e['time_is_other']} another time"
            if s:
                line += f" (later by {s['min_s']}..{s['max_s']} s, median {s['median_s']})"
        line += f"; rxInfo gwTime kept {e['rx_info_gw_time_kept']}/{e['accepted']}"
        say(line)

    dl = res["downlinks"]
    say(
        f"Downlinks: {dl['total']} from ChirpStack ({dl['with_ack_bit']} with ACK), for uplinks of phase "
        + ", ".join(f"{p} {n}" for p, n in dl["for_uplinks_of_phase"].items())
        + (f", unmatched {dl['unmatched']}" if dl["unmatched"] else "")
    )
    if dl["total"]:
        say(
            f"  {dl['with_mac_commands']} carry MAC commands; by how long after the uplink's reception they reached "
            "the broker, with berrygw's ack per item (RX1/RX2):"
        )
        for label, b in dl["by_uplink_age"].items():
            if b["count"]:
                a = b["age"]
                say(
                    f"    {label:<27} {b['count']:>5}   ({a['min_s']}..{a['max_s']} s)   "
                    f"acks: {fmt_counter(b['berrygw_acks'])}"
                )
    say()
    say(
        table(
            [[x["name"], x["dev_addr"], "yes" if x["confirmed"] else "no", x["sent"], x["published"], x["accepted"],
              x["highest_fcnt"]] for x in res["devices"]],
            ["device", "dev_addr", "confirmed", "sent", "published", "accepted", "highest FCnt"],
        )
    )
    say(f"(radio counts from the {res['radio_source']})")


def fmt_counter(c):
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"


# ---------------------------------------------------------------- main


def version_of(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.strip()
        return out.splitlines()[0].split()[-1] if out else "?"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


def progress(label, t0, rec, http_port, procs):
    procs.check()
    published, accepted = rec.counts()
    st = berrygw_status(http_port)
    radio = backlog = "?"
    if st:
        radio = st[0]["radio"]["received"]
        if st[1]:
            b = st[1]["backlog"]
            backlog = f"{b['records']}" + (f" (oldest {b['oldest_age_secs']} s)" if b.get("oldest_age_secs") else "")
    say(
        f"  +{(now_ms() - t0) / 1000:5.0f} s  {label:<7} radio {radio}, published {published}, "
        f"accepted {accepted}, backlog {backlog}"
    )


def sleep_phase(label, secs, t0, rec, http_port, procs):
    end = time.monotonic() + secs
    next_report = time.monotonic() + PROGRESS_EVERY_S
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 1.0, max(0.0, next_report - time.monotonic())))
        procs.check()
        if time.monotonic() >= next_report and end - time.monotonic() > 1:
            progress(label, t0, rec, http_port, procs)
            next_report += PROGRESS_EVERY_S


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--chirpstack-bin", required=True)
    ap.add_argument("--berrygw-bin", required=True)
    ap.add_argument("--up-secs", type=int, default=120)
    ap.add_argument("--outage-secs", type=int, default=300)
    ap.add_argument("--devices", type=int, default=5)
    ap.add_argument("--interval-ms", type=int, default=2000)
    ap.add_argument("--tail-secs", type=int, default=15)
    ap.add_argument("--replay-gap-ms", type=int)
    ap.add_argument("--replay-rate", type=float)
    ap.add_argument("--drain-timeout-secs", type=int)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not 1 <= args.devices <= 255:
        ap.error("--devices must be 1..255")
    if args.interval_ms < 1 or args.up_secs < 1 or args.outage_secs < 0 or args.tail_secs < 0:
        ap.error("intervals and durations must be positive")
    if args.drain_timeout_secs is None:
        args.drain_timeout_secs = max(300, 4 * args.outage_secs)
    if args.replay_rate is not None and args.replay_rate == int(args.replay_rate):
        args.replay_rate = int(args.replay_rate)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    work = args.work
    procs = Procs(work)
    try:
        return _run(args, work, procs)
    except Interrupted as e:
        say(f"\ninterop-chirpstack: interrupted ({e}), stopping")
        return 130
    except Failed as e:
        say(f"\ninterop-chirpstack: {e}")
        return 1
    finally:
        # Stop in order: berrygw first (it flushes its journal), ChirpStack, the brokers.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for obj in (_state.get("rec"), _state.get("relay")):
            if obj is not None:
                obj.stop()
        procs.stop_all()


_state = {}


def _run(args, work, procs):
    ports = dict(redis=free_port(), mqtt=free_port(), api=free_port(), relay=free_port(), http=free_port())
    versions = dict(berrygw=version_of([args.berrygw_bin, "--version"]), chirpstack=version_of([args.chirpstack_bin, "--version"]))
    say(
        f"interop-chirpstack: ChirpStack {versions['chirpstack']}, berrygw {versions['berrygw']}; "
        f"up {args.up_secs} s, outage {args.outage_secs} s, {args.devices} devices every {args.interval_ms} ms"
    )

    # Devices, keys drawn for this run, registered in ChirpStack.
    devices = []
    for i in range(1, args.devices + 1):
        devices.append(
            dict(
                name=f"dev{i:02d}",
                kind=KINDS[(i - 1) % len(KINDS)],
                dev_addr=f"260b10{i:02x}",
                dev_eui=f"70b3d57ed0b1{i:04x}",
                nwk_s_key=secrets.token_hex(16),
                app_s_key=secrets.token_hex(16),
                confirmed=(i == 1),
            )
        )
    # berrygw's config, checked before anything starts.
    config = berrygw_config(work, args, devices, ports["relay"], ports["http"])
    check = subprocess.run([args.berrygw_bin, "check-config", str(config)], capture_output=True, text=True)
    if check.returncode != 0:
        hint = ""
        if "unknown field `replay_" in (check.stderr + check.stdout):
            hint = "\n  (this berrygw does not know replay_gap_ms / replay_rate: unset REPLAY_GAP_MS / REPLAY_RATE or use a newer binary)"
        raise Failed(f"berrygw check-config refused {config.name}:\n  {(check.stderr or check.stdout).strip()}{hint}")
    # Does this berrygw pace replays (and so apply its own defaults when nothing is set)?
    probe = work / "berrygw-probe.toml"
    probe.write_text(config.read_text() + "replay_gap_ms = 0\n" * (args.replay_gap_ms is None))
    probe.chmod(0o600)
    knows_pacing = subprocess.run([args.berrygw_bin, "check-config", str(probe)], capture_output=True).returncode == 0
    probe.unlink()
    if args.replay_gap_ms is None and args.replay_rate is None:
        args.pacing = "not set: berrygw's defaults" if knows_pacing else "none (this berrygw has no replay pacing)"
    else:
        args.pacing = ", ".join(
            f"{k}={v}" for k, v in (("replay_gap_ms", args.replay_gap_ms), ("replay_rate", args.replay_rate)) if v is not None
        )
    say(f"  berrygw replay pacing: {args.pacing}")

    # Redis, no persistence.
    (work / "redis").mkdir()
    procs.start(
        "redis",
        ["redis-server", "--port", str(ports["redis"]), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(work / "redis"), "--daemonize", "no", "--protected-mode", "yes"],
    )

    # Mosquitto, unlimited queues so that it drops nothing during a replay.
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    (work / "mosquitto.conf").write_text(
        f"listener {ports['mqtt']} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"max_queued_messages 0\nmax_inflight_messages 0\nuser {user}\n"
    )
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    procs.start("mosquitto", [mosquitto, "-c", str(work / "mosquitto.conf")])
    wait_for("redis and mosquitto to listen", 15,
             lambda: port_open(ports["redis"]) and port_open(ports["mqtt"]), procs, ("redis", "mosquitto"))

    # ChirpStack.
    conf_dir, region_source = chirpstack_config(work, args.chirpstack_bin, ports["redis"], ports["mqtt"], ports["api"])
    env = dict(os.environ, NO_COLOR="1")
    procs.start("chirpstack", [args.chirpstack_bin, "--config", str(conf_dir)], env=env)
    cs = ChirpStackApi(ports["api"])
    t = time.monotonic()
    wait_for("ChirpStack's API (login admin/admin)", 120, cs.login, procs, ("chirpstack",))
    say(f"  ChirpStack up in {time.monotonic() - t:.1f} s (region file: {region_source or 'built-in copy'})")

    app_id = cs.provision(devices, args.interval_ms)
    say(f"  provisioned gateway {GATEWAY_ID}, {len(devices)} ABP devices (dev01 confirmed) in application {app_id}")

    rec = Recorder(ports["mqtt"])
    _state["rec"] = rec
    relay = Relay(ports["relay"], ports["mqtt"])
    _state["relay"] = relay

    # berrygw.
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET", "WATCHDOG_USEC", "RUST_LOG")}
    env.update(BERRYGW_LOG="info,berrygw_lora::sim=debug", NO_COLOR="1")
    t0 = now_ms()
    procs.start("berrygw", [args.berrygw_bin, "run", "--config", str(config)], env=env)
    wait_for("berrygw connected to the broker through the relay", 30,
             lambda: (st := berrygw_status(ports["http"])) and st[1] and st[1]["connected"], procs, ("berrygw",))
    say(f"  berrygw running, connected through the relay; phase up for {args.up_secs} s")

    times = dict(started=t0)
    sleep_phase("up", max(0, args.up_secs - (now_ms() - t0) / 1000), t0, rec, ports["http"], procs)
    progress("up", t0, rec, ports["http"], procs)
    relay.set_open(False)
    times["cut"] = now_ms()
    say(f"  +{(times['cut'] - t0) / 1000:5.0f} s  relay closed: outage for {args.outage_secs} s")
    sleep_phase("outage", args.outage_secs, t0, rec, ports["http"], procs)
    progress("outage", t0, rec, ports["http"], procs)
    relay.set_open(True)
    times["reopen"] = now_ms()
    say(f"  +{(times['reopen'] - t0) / 1000:5.0f} s  relay reopened: waiting for berrygw's backlog to drain")

    # Drained: the journal backlog is 0. A pacer that holds live uplinks back may keep
    # it above 0 for good: then stop HELD_WAIT_S after every uplink received before the
    # reopening was published (the radio's debug lines up to the reopening are written by now).
    times["drained"] = times["outage_out"] = None
    names = {d["name"]: d["dev_addr"] for d in devices}
    time.sleep(0.3)
    before = sum(1 for t, _, _ in sim_radio_log(work / "berrygw.log", names) if t < times["reopen"]) or None
    deadline = time.monotonic() + args.drain_timeout_secs
    next_report = time.monotonic() + PROGRESS_EVERY_S
    held = sink = None
    while time.monotonic() < deadline:
        procs.check()
        st = berrygw_status(ports["http"])
        sink = st[1] if st else None
        if sink and sink["connected"] and sink["backlog"]["records"] == 0:
            times["drained"] = now_ms()
            break
        if times["outage_out"] is None and before and rec.published_before(times["reopen"]) >= before:
            times["outage_out"] = now_ms()
            told = False
        if times["outage_out"] is not None and not told and now_ms() - times["outage_out"] > 3000:
            told = True
            say(
                f"  +{(times['outage_out'] - t0) / 1000:5.0f} s  all {before} uplinks received before the reopening "
                f"were published, yet the backlog is {sink['backlog']['records'] if sink else '?'} 3 s later; "
                f"waiting {HELD_WAIT_S} s more"
            )
        if times["outage_out"] is not None and now_ms() - times["outage_out"] > HELD_WAIT_S * 1000:
            held = sink["backlog"] if sink else None
            break
        if time.monotonic() >= next_report:
            progress("drain", t0, rec, ports["http"], procs)
            next_report += PROGRESS_EVERY_S
        time.sleep(0.1)
    else:
        held = sink["backlog"] if sink else None
    times["backlog_left"] = held and dict(records=held["records"], oldest_age_secs=held["oldest_age_secs"])
    if times["drained"] is None:
        say(
            f"  backlog not drained ({held['records'] if held else '?'} records, oldest "
            f"{held['oldest_age_secs'] if held else '?'} s); stopping anyway"
        )
    else:
        say(
            f"  +{(times['drained'] - t0) / 1000:5.0f} s  backlog 0 after {(times['drained'] - times['reopen']) / 1000:.1f} s; "
            f"{args.tail_secs} s more for ChirpStack"
        )
    sleep_phase("tail", args.tail_secs, t0, rec, ports["http"], procs)
    procs.stop("berrygw")
    times["end"] = now_ms()
    time.sleep(1.5)  # ChirpStack's last events (deduplication 200 ms) and downlinks
    messages = rec.snapshot()
    save_messages(work / "broker-messages.jsonl", messages)

    radio_log = sim_radio_log(work / "berrygw.log", names)
    cs_received, cs_problems = chirpstack_log(work / "chirpstack.log")
    res = analyse(args, devices, messages, radio_log, cs_received, cs_problems, times, relay, app_id)
    res["versions"] = versions
    res["config"] = dict(
        up_secs=args.up_secs,
        outage_secs=args.outage_secs,
        devices=args.devices,
        interval_ms=args.interval_ms,
        tail_secs=args.tail_secs,
        replay_gap_ms=args.replay_gap_ms,
        replay_rate=args.replay_rate,
        chirpstack_defaults=dict(deduplication_delay_ms=200, rx_timestamp_max_drift_s=30),
    )
    res["times_ms"] = times
    report(args, res, times)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
        say(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
