#!/usr/bin/env python3
"""A local stand-in for m3ter's Config and Ingest APIs, for tests and demos.

It behaves like m3ter for what the extension uses:
  POST /oauth/token                         Basic credentials -> expiring bearer token
  POST /organizations/{org}/measurements    validated, recorded by uid (stored once)
  POST /organizations/{org}/meters          validated like Create Meter, recorded
  GET  /organizations/{org}/meters          paginated with pageSize / nextToken
  GET  /organizations/{org}/organizationconfig
  + enrichment after "accepted", Events, failed-ingest downloads, accounts: standin_enrichment.py
  + the usage query (Data Explorer), silent losses and changes: standin_usage.py
Errors are m3ter's statuses with a JSON body {"message": ...}: 400 for bodies that
break the API's rules, 403 for an unknown org, a bad or expired token, or an ingest
payload of 512,000 bytes or more.

Tests steer it through /_control (no auth):
  POST /_control/reset                      forget all but issued tokens, back to defaults
  POST /_control/faults   {"faults":[...], "clear": bool}  queue faults (after
        dropping the queued ones when "clear" is true); each has "match" (a path
        substring, default any), "match_body" (a substring of the request body,
        default any), "count" (default 1) and one of: "status" (with
        optional "retry_after", "retry_after_ms" (a Retry-After-Ms header), "body"), "delay" (seconds before answering; with "status", before that answer),
        "drop" (close without answering), "reset_mid_body" (with "after_accept":
        after storing the measurements), "trickle" (seconds
        spent sending the body), "empty_body", "malformed_body" (with a 200),
        "body_bytes" (a 200 whose body is that many blanks, written 1 MiB at a
        time; a client that stops reading on the way is let go)
  POST /_control/config   {"token_ttl": s, "token_body": "any"|"json"|"form" (the
        grant's encodings the token endpoint takes), "token_pad": n (tokens n bytes
        longer), "reject_meters": [...], "expire_tokens":
        true, "rate_limit": ..., "latency_ms": n, "bandwidth_bytes_per_s": n,
        "fast": true, "random_5xx": 0.05}   (fast: accept and count measurements
        without parsing or storing them, for benchmarks; random_5xx: answer that
        share of ingest requests with a random 500, 502, 503 or 504)
  POST /_control/listen   {}                open one more listening port, a separate
        source for the per-source limit; answers {"port": n, "source": name}
  GET  /_control/summary                    counts: accepted, duplicates, requests,
        token_requests, ingest_requests, status_counts, limited (429s by limit),
        max_in_flight, in_flight, by_source (ingest requests per source)...
  GET  /_control/measurements               every stored measurement
  GET  /_control/requests                   the request log: t (arrival), answered,
        in_flight (at arrival), source, path, status, measurements, bytes, note
  GET  /_control/meters                     every stored meter
  GET  /_control/tokens                     every bearer token it issued

The network and m3ter's limits (off by default, so loopback tests stay fast):
  latency_ms            each request to m3ter's paths (not /_control) waits half of
                        it after it is read and before it is handled (the arrival time
                        the limits and the log see), and the other half before the
                        answer is written
  bandwidth_bytes_per_s per connection: reading a request body and writing an answer
                        go no faster (0: unlimited)
  rate_limit            m3ter's Ingest API limits, answered with 429, Retry-After: 1
                        and {"message": ...}: true (or {}) for m3ter's published
                        figures, null/false for none, or an object overriding them:
                        {"per_second": 50, "window": 300, "window_max": 5000,
                        "model": "fixed"|"sliding"|"token_bucket", "burst": 1,
                        "jitter_ms": 0, "stall_every": 0, "stall_ms": 0, "seed": 1}.
                        per_second is per organization, counted as the model says
                        (standin_limits.py); window_max is per source over a rolling
                        window of that many seconds.  Only admitted requests count.
A source is a client address as seen on one listening port.  On loopback every
client is 127.0.0.1, so each extra port (--source-ports, POST /_control/listen) is a
source of its own: two clusters pointed at two ports are two sources sharing one
organization's per-second limit.

Run: m3ter_standin.py --port-file FILE [--port N] [--state-file FILE]
     [--latency-ms N] [--bandwidth-bytes-per-s N] [--rate-limit] [--source-ports N]
It prints its port and serves until killed (extra source ports go to FILE.sources,
one a line; with --state-file, SIGTERM saves what it accepted and the next start
loads it).  It takes load as a server does: a thread per connection, keep-alive, a
listen backlog of 1024.  Python standard library only.
"""

import argparse
import base64
import json
import os
import random
import re
import secrets
import socket
import signal
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qs

import standin_enrichment
import standin_usage
from standin_limits import RateLimits

MAX_PAYLOAD = 512000
MAX_MEASUREMENTS = 1000
NUMERIC_MAPS = ("measure", "cost", "income")
STRING_MAPS = ("who", "where", "what", "other", "metadata")
MEASUREMENT_KEYS = {"uid", "meter", "account", "ts", "ets"} | set(NUMERIC_MAPS) | set(STRING_MAPS)
CATEGORIES = {"WHO", "WHERE", "WHAT", "OTHER", "METADATA", "MEASURE", "INCOME", "COST"}
ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})$")
FORBIDDEN_CODE_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u00a0\u1680\u2000-\u200b\u2028\u2029\u202f\u205f\u3000\ufeff]")


class ApiError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


LISTEN_BACKLOG = 1024

standin_enrichment.ApiError = ApiError  # enrichment, events, accounts (standin_enrichment.py)
standin_usage.ApiError = ApiError  # the usage query (standin_usage.py)

def now_iso():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_code(what, value, maxlen=80):
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"{what} must be a non-empty string")
    if len(value) > maxlen:
        raise ApiError(400, f"{what} must be at most {maxlen} characters")
    if value != value.strip(" ") or FORBIDDEN_CODE_CHARS.search(value):
        raise ApiError(400, f"{what} must not contain non-printable or whitespace characters except space, nor start or end with whitespace")


# ---- the network: latency and bandwidth ----

def pause(seconds):
    if seconds > 0:
        time.sleep(seconds)


def throttled_read(rfile, length, rate):
    """Read length bytes, no faster than rate bytes a second (0: at once)."""
    if not rate:
        return rfile.read(length)
    chunks, got, t0 = [], 0, time.monotonic()
    step = max(1024, min(65536, int(rate) // 50))
    while got < length:
        chunk = rfile.read(min(step, length - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
        pause(t0 + got / rate - time.monotonic())
    return b"".join(chunks)


def throttled_write(wfile, data, rate):
    """Write data, no faster than rate bytes a second (0: at once)."""
    if not rate:
        wfile.write(data)
        return
    t0 = time.monotonic()
    step = max(256, min(65536, int(rate) // 50))
    for off in range(0, len(data), step):
        wfile.write(data[off:off + step])
        wfile.flush()
        pause(t0 + (off + step) / rate - time.monotonic())


# ---- m3ter's limits: standin_limits.py ----

def parse_rate_limit(value):
    """The rate_limit config value as standin_limits.RateLimits (or None); 400 when malformed."""
    try:
        return RateLimits.parse(value)
    except (ValueError, TypeError) as e:
        raise ApiError(400, str(e))


# ---- what the stand-in remembers ----

class State:
    """Everything the stand-in remembers; guarded by one lock."""

    def __init__(self, org_id, access_key_id, api_secret, defaults=None):
        self.org_id = org_id
        self.access_key_id = access_key_id
        self.api_secret = api_secret
        # network and limit settings from the command line; reset returns to them
        self.defaults = dict(defaults or {})
        self.lock = threading.Lock()
        self.listeners = []
        self.reset()

    def reset(self):
        """Back to defaults; issued tokens stay valid (use expire_tokens to drop them)."""
        self.tokens = getattr(self, "tokens", {})
        self.token_ttl = 3600
        self.token_body = "any"
        self.token_pad = 0
        self.measurements = {}
        self.duplicates = 0
        self.meters = []
        self.requests = []
        self.faults = []
        self.reject_meters = set()
        self.rate_limit = parse_rate_limit(self.defaults.get("rate_limit"))
        self.latency_ms = float(self.defaults.get("latency_ms", 0))
        self.bandwidth = float(self.defaults.get("bandwidth_bytes_per_s", 0))
        self.in_flight = 0
        self.max_in_flight = 0
        self.fast = False
        self.accepted_total = 0
        self.random_5xx = 0.0
        self.stopping = False
        self.enrichment = getattr(self, "enrichment", None) or standin_enrichment.Enrichment()
        self.enrichment.reset()
        self.usage = getattr(self, "usage", None) or standin_usage.Usage()
        self.usage.reset()

    def save(self, path):
        """Keep what was accepted across a restart (the 'down and back' test)."""
        with self.lock:
            self.stopping = True  # nothing is acknowledged after this snapshot
            doc = {"measurements": dict(self.measurements), "duplicates": self.duplicates,
                   "accepted_total": self.accepted_total, "tokens": dict(self.tokens)}
        with open(path + ".tmp", "w") as f:
            json.dump(doc, f)
        os.replace(path + ".tmp", path)

    def load(self, path):
        with open(path) as f:
            doc = json.load(f)
        self.measurements = doc["measurements"]
        self.duplicates = doc["duplicates"]
        self.accepted_total = doc["accepted_total"]
        self.tokens = doc["tokens"]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "m3ter-standin/1.0"

    def log_message(self, fmt, *args):
        pass

    def setup(self):
        super().setup()
        # answers go out as one write; without this, Nagle's algorithm and the
        # client's delayed ACK add about 40 ms to every keep-alive request
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # ---- plumbing ----
    @property
    def state(self):
        return self.server.state

    # per request, set in handle_any(): the network model applies to m3ter's paths
    # only; arrival is when the first half of the latency has passed
    modelled = False
    answer_delayed = False
    entry = None
    arrival = None
    arrived_in_flight = None

    @property
    def source(self):
        """Who the per-source limit counts: the client address, per listening port."""
        return "%s@%d" % (self.client_address[0], self.server.server_address[1])

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return b""
        return throttled_read(self.rfile, length, self.state.bandwidth if self.modelled else 0)

    def before_answer(self):
        """The second half of the latency, once per modelled request."""
        if self.modelled and not self.answer_delayed:
            self.answer_delayed = True
            pause(self.state.latency_ms / 2000.0)

    def send_json(self, status, obj, extra_headers=None):
        body = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
        self.before_answer()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self._headers_buffer.append(b"\r\n")
        self._headers_buffer.append(body)
        if self.modelled and self.state.bandwidth:
            data = b"".join(self._headers_buffer)
            self._headers_buffer = []
            throttled_write(self.wfile, data, self.state.bandwidth)
        else:
            self.flush_headers()
        self.answered()

    def answered(self):
        """Note in the log when the answer was written."""
        if self.entry is not None:
            self.entry["answered"] = time.time()

    def record(self, status, n=0, nbytes=0, note=None):
        entry = {"t": self.arrival or time.time(), "method": self.command, "path": urlsplit(self.path).path,
                 "status": status, "measurements": n, "bytes": nbytes, "note": note,
                 "source": self.source, "in_flight": self.arrived_in_flight, "answered": None}
        with self.state.lock:
            self.state.requests.append(entry)
        self.entry = entry

    def take_fault(self, path, body=b""):
        with self.state.lock:
            for fault in self.state.faults:
                if (fault.get("match", "") in path and fault.get("match_body", "").encode() in body
                        and fault.get("count", 1) > 0):
                    fault["count"] = fault.get("count", 1) - 1
                    if fault["count"] <= 0:
                        self.state.faults.remove(fault)
                    return dict(fault)
        return None

    def reset_mid_body(self, nbytes):
        """Start a 200 answer, then reset the connection halfway through its body."""
        self.record(0, nbytes=nbytes, note="reset mid-body")
        self.before_answer()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "100")
        self.end_headers()
        self.wfile.write(b'{"result":')
        self.wfile.flush()
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.connection.close()
        self.answered()

    def big_body(self, size, nbytes):
        """A 200 with a body of size blanks, written a piece at a time."""
        self.record(200, nbytes=nbytes, note="injected %d-byte body" % size)
        self.before_answer()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        piece = b" " * (1 << 20)
        try:
            while size > 0:
                self.wfile.write(piece[:size])
                size -= len(piece)
            self.wfile.flush()
        except OSError:
            self.close_connection = True
        self.answered()

    def apply_fault(self, fault, nbytes):
        """Act out a fault; returns True when the request was answered (or dropped)."""
        if "delay" in fault:
            time.sleep(float(fault["delay"]))
            if "status" not in fault:
                return False    # a slow answer, the usual one
        if fault.get("drop"):
            self.record(0, nbytes=nbytes, note="dropped")
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.answered()
            return True
        if "body_bytes" in fault:
            self.big_body(int(fault["body_bytes"]), nbytes)
            return True
        if fault.get("reset_mid_body") and not fault.get("after_accept"):
            self.reset_mid_body(nbytes)
            return True
        if "status" in fault:
            status = int(fault["status"])
            headers = {}
            if "retry_after" in fault:
                headers["Retry-After"] = str(fault["retry_after"])
            if "retry_after_ms" in fault:
                headers["Retry-After-Ms"] = str(fault["retry_after_ms"])
            body = fault.get("body", {"message": f"Injected fault: HTTP {status}"})
            self.record(status, nbytes=nbytes, note="injected")
            self.send_json(status, body if not isinstance(body, str) else body.encode(), headers)
            return True
        return False

    # ---- auth ----
    def check_bearer(self, path):
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise ApiError(403, "Unauthorized: a bearer token is required")
        with self.state.lock:
            expiry = self.state.tokens.get(auth[7:])
        if expiry is None or expiry < time.time():
            raise ApiError(403, "Unauthorized: the bearer token is invalid or has expired")
        m = re.match(r"^/organizations/([^/]+)/", path)
        if not m or m.group(1) != self.state.org_id:
            raise ApiError(403, "Forbidden: unknown organization")

    def token(self, body):
        auth = self.headers.get("Authorization", "")
        try:
            key, _, secret = base64.b64decode(auth[6:]).decode().partition(":") if auth.startswith("Basic ") else ("", "", "")
        except Exception:
            key, secret = "", ""
        if key != self.state.access_key_id or secret != self.state.api_secret:
            raise ApiError(401, "Bad credentials")
        # the grant as JSON (m3ter's SDKs) or form-encoded (RFC 6749, m3ter's curl example);
        # token_body "json" or "form" takes only that one
        form = self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded")
        if self.state.token_body not in ("any", "form" if form else "json"):
            raise ApiError(400, "Unsupported request body for the token endpoint")
        try:
            grant = (parse_qs((body or b"").decode()).get("grant_type", [None])[0] if form
                     else json.loads(body or b"{}").get("grant_type"))
        except ValueError:
            raise ApiError(400, "Malformed JSON request body")
        if grant != "client_credentials":
            raise ApiError(400, "Unsupported grant_type")
        tok = secrets.token_hex(24) + "x" * self.state.token_pad
        with self.state.lock:
            ttl = self.state.token_ttl
            self.state.tokens[tok] = time.time() + ttl
        return {"access_token": tok, "token_type": "bearer", "expires_in": ttl}

    # ---- ingest ----
    def check_rate(self, org):
        """m3ter's limits, counted at the request's arrival time."""
        with self.state.lock:
            limits = self.state.rate_limit
            refused = limits.admit(org, self.source, limits.arrival(self.arrival)) if limits else None
        if refused == "organization":
            raise ApiError(429, "Too Many Requests: over the organization's limit of %d requests a second"
                           % limits.per_second)
        if refused == "source":
            raise ApiError(429, "Too Many Requests: over the limit of %d requests in %g seconds from this source"
                           % (limits.window_max, limits.window))

    def measurements(self, path, body):
        if self.state.random_5xx and random.random() < self.state.random_5xx:
            raise ApiError(random.choice((500, 502, 503, 504)), "Injected random server error")
        if len(body) >= MAX_PAYLOAD:
            raise ApiError(403, f"Request payload of {len(body)} bytes exceeds the limit of {MAX_PAYLOAD} bytes")
        self.check_rate(path.split("/")[2])
        try:
            doc = json.loads(body)
        except ValueError:
            raise ApiError(400, "Malformed JSON request body")
        items = doc.get("measurements") if isinstance(doc, dict) else None
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_MEASUREMENTS:
            raise ApiError(400, "measurements must be an array of 1 to 1000 elements")
        if self.state.fast:
            with self.state.lock:
                self.state.accepted_total += len(items)
            return len(items)
        for i, m in enumerate(items):
            self.check_measurement(i, m)
        with self.state.lock:
            if self.state.stopping:
                raise ApiError(503, "Shutting down")
            for m in items:
                if m["uid"] in self.state.measurements:
                    self.state.duplicates += 1
                    self.state.enrichment.ingested(self.state, m, True)
                else:
                    self.state.measurements[m["uid"]] = m
                    self.state.enrichment.ingested(self.state, m, False)
                    self.state.enrichment.account_at_ingest(m["account"])
            self.state.accepted_total += len(items)
        return len(items)

    def check_measurement(self, i, m):
        if not isinstance(m, dict):
            raise ApiError(400, f"measurements[{i}] must be an object")
        extra = set(m) - MEASUREMENT_KEYS
        if extra:
            raise ApiError(400, f"measurements[{i}] has unknown fields: {sorted(extra)}")
        if not isinstance(m.get("uid"), str) or not m["uid"]:
            raise ApiError(400, f"measurements[{i}].uid is required")
        check_code(f"measurements[{i}].meter", m.get("meter"))
        check_code(f"measurements[{i}].account", m.get("account"), maxlen=10**6)
        for k in ("ts", "ets"):
            if k in m and (not isinstance(m[k], str) or not ISO_RE.match(m[k])):
                raise ApiError(400, f"measurements[{i}].{k} must be an ISO 8601 date-time")
        if "ts" not in m:
            raise ApiError(400, f"measurements[{i}].ts is required")
        for k in NUMERIC_MAPS + STRING_MAPS:
            if k not in m:
                continue
            if not isinstance(m[k], dict):
                raise ApiError(400, f"measurements[{i}].{k} must be an object")
            for kk, vv in m[k].items():
                ok = (isinstance(vv, (int, float)) and not isinstance(vv, bool)) if k in NUMERIC_MAPS else isinstance(vv, str)
                if not ok:
                    raise ApiError(400, f"measurements[{i}].{k}.{kk} has the wrong type")
        if m["meter"] in self.state.reject_meters:
            raise ApiError(400, f"measurements[{i}]: no meter with code {m['meter']}")

    # ---- config ----
    def create_meter(self, body):
        try:
            doc = json.loads(body)
        except ValueError:
            raise ApiError(400, "Malformed JSON request body")
        if not isinstance(doc, dict):
            raise ApiError(400, "The body must be an object")
        if "version" in doc:
            raise ApiError(400, "version must not be given when creating a Meter")
        name = doc.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 200:
            raise ApiError(400, "name must be 1 to 200 characters")
        check_code("code", doc.get("code"))
        for key, lo in (("dataFields", 1), ("derivedFields", 0)):
            fields = doc.get(key)
            if not isinstance(fields, list) or not lo <= len(fields) <= 15:
                raise ApiError(400, f"{key} must be an array of {lo} to 15 elements")
            for j, f in enumerate(fields):
                if not isinstance(f, dict) or f.get("category") not in CATEGORIES:
                    raise ApiError(400, f"{key}[{j}].category is invalid")
                check_code(f"{key}[{j}].code", f.get("code"))
                if not isinstance(f.get("name"), str) or not f["name"]:
                    raise ApiError(400, f"{key}[{j}].name is required")
                if key == "derivedFields" and not f.get("calculation"):
                    raise ApiError(400, f"{key}[{j}].calculation is required")
        for key in ("productId", "groupId"):
            if key in doc and (not isinstance(doc[key], str) or len(doc[key]) != 36):
                raise ApiError(400, f"{key} must be a 36-character UUID")
        with self.state.lock:
            if any(mt["code"] == doc["code"] for mt in self.state.meters):
                raise ApiError(400, f"A Meter with code {doc['code']} already exists")
            meter = dict(doc)
            meter.update(id=str(uuid.uuid4()), version=1, dtCreated=now_iso(), dtLastModified=now_iso(),
                         createdBy="service-user", lastModifiedBy="service-user")
            self.state.meters.append(meter)
        return meter

    def list_meters(self, query):
        size = standin_enrichment.page_size(query)
        start = int(query.get("nextToken", ["0"])[0] or 0)
        with self.state.lock:
            page = self.state.meters[start:start + size]
            more = start + size < len(self.state.meters)
        out = {"data": page}
        if more:
            out["nextToken"] = str(start + size)
        return out

    # ---- control ----
    def control(self, path, body):
        st = self.state
        doc = json.loads(body) if body else {}
        out = st.enrichment.control(self.command, path, doc)
        if out is None:
            out = st.usage.control(st, self.command, path, doc)
        if out is not None:
            return out
        with st.lock:
            if path == "/_control/reset":
                in_flight = st.in_flight
                st.reset()
                st.in_flight = st.max_in_flight = in_flight
                return {"ok": True}
            if path == "/_control/faults":
                if doc.get("clear"):
                    st.faults = []
                st.faults.extend(doc.get("faults", []))
                return {"ok": True, "queued": len(st.faults)}
            if path == "/_control/config":
                if "token_ttl" in doc:
                    st.token_ttl = int(doc["token_ttl"])
                if "token_body" in doc:
                    st.token_body = doc["token_body"]
                if "token_pad" in doc:
                    st.token_pad = int(doc["token_pad"])
                if "reject_meters" in doc:
                    st.reject_meters = set(doc["reject_meters"])
                if doc.get("expire_tokens"):
                    st.tokens = {k: 0 for k in st.tokens}
                if "rate_limit" in doc:
                    st.rate_limit = parse_rate_limit(doc["rate_limit"])
                if "latency_ms" in doc:
                    st.latency_ms = max(0.0, float(doc["latency_ms"]))
                if "bandwidth_bytes_per_s" in doc:
                    st.bandwidth = max(0.0, float(doc["bandwidth_bytes_per_s"] or 0))
                if "fast" in doc:
                    st.fast = bool(doc["fast"])
                if "random_5xx" in doc:
                    st.random_5xx = float(doc["random_5xx"])
                return {"ok": True}
            if path == "/_control/summary":
                reqs = st.requests
                return {
                    "accepted": len(st.measurements), "accepted_total": st.accepted_total,
                    "duplicates": st.duplicates, "meters": len(st.meters),
                    "requests": len(reqs),
                    "token_requests": sum(1 for r in reqs if r["path"] == "/oauth/token"),
                    "ingest_requests": sum(1 for r in reqs if r["path"].endswith("/measurements")),
                    "status_counts": _count(r["status"] for r in reqs),
                    "faults_queued": len(st.faults),
                    "limited": _count(("organization" if "organization" in (r["note"] or "") else "source")
                                      for r in reqs if r["status"] == 429 and r["note"]
                                      and r["note"].startswith("Too Many Requests")),
                    "by_source": _count(r["source"] for r in reqs if r["path"].endswith("/measurements")),
                    "in_flight": st.in_flight, "max_in_flight": st.max_in_flight,
                    "latency_ms": st.latency_ms, "bandwidth_bytes_per_s": st.bandwidth,
                    "rate_limit": st.rate_limit.describe() if st.rate_limit else None,
                }
            if path == "/_control/measurements":
                return list(st.measurements.values())
            if path == "/_control/requests":
                return list(st.requests)
            if path == "/_control/meters":
                return list(st.meters)
            if path == "/_control/tokens":
                return list(st.tokens)
        if path == "/_control/listen":
            server = listen(self.server, 0)
            return {"port": server.server_address[1], "source": "127.0.0.1@%d" % server.server_address[1]}
        raise ApiError(404, "no such control endpoint")

    # ---- dispatch ----
    def handle_any(self):
        parts = urlsplit(self.path)
        path = parts.path
        self.entry = self.arrival = self.arrived_in_flight = None
        self.answer_delayed = False
        self.modelled = not path.startswith("/_control/")
        if not self.modelled:
            body = self.read_body() if self.command in ("POST", "PUT") else b""
            try:
                self.send_json(200, self.control(path, body))
            except ApiError as e:
                self.send_json(e.status, {"message": e.message})
            return
        with self.state.lock:
            self.state.in_flight += 1
            self.state.max_in_flight = max(self.state.max_in_flight, self.state.in_flight)
        try:
            body = self.read_body() if self.command in ("POST", "PUT") else b""
            pause(self.state.latency_ms / 2000.0)
            with self.state.lock:
                self.arrival = time.time()
                self.arrived_in_flight = self.state.in_flight
            self.handle_m3ter(parts, path, body)
        finally:
            with self.state.lock:
                self.state.in_flight -= 1

    def handle_m3ter(self, parts, path, body):
        """Answer one request to m3ter's API (faults first)."""
        fault = self.take_fault(path, body)
        if fault and self.apply_fault(fault, len(body)):
            return
        try:
            n = 0
            if path == "/oauth/token" and self.command == "POST":
                result = self.token(body)
            elif path.startswith("/_files/") and self.command == "GET":
                result = self.state.enrichment.serve_file(self, path, parse_qs(parts.query))
            else:
                self.check_bearer(path)
                if path.endswith("/measurements") and self.command == "POST":
                    n = self.measurements(path, body)
                    result = {"result": "accepted"}
                elif path.endswith("/meters") and self.command == "POST":
                    result = self.create_meter(body)
                elif path.endswith("/meters") and self.command == "GET":
                    result = self.list_meters(parse_qs(parts.query))
                elif path.endswith("/usage/query") and self.command == "POST":
                    result = self.state.usage.query(self.state, self.state.enrichment.account_for, body)
                elif path.endswith("/organizationconfig") and self.command == "GET":
                    result = {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, self.state.org_id)),
                              "organizationId": self.state.org_id, "currency": "USD",
                              "timezone": "UTC", "version": 1}
                else:
                    result = self.state.enrichment.route(self, self.command, path, parse_qs(parts.query))
                    if result is None:
                        raise ApiError(404, f"Not Found: {self.command} {path}")
        except ApiError as e:
            self.record(e.status, nbytes=len(body), note=e.message)
            headers = {"Retry-After": "1"} if e.status == 429 else None
            self.send_json(e.status, {"message": e.message}, headers)
            return
        if fault and fault.get("reset_mid_body"):
            self.reset_mid_body(len(body))  # after_accept: stored, but the answer is lost
            return
        self.record(200, n=n, nbytes=len(body))
        if fault and fault.get("empty_body"):
            self.send_json(200, b"")
        elif fault and fault.get("malformed_body"):
            self.send_json(200, b"{not json")
        elif fault and "trickle" in fault:
            payload = json.dumps(result).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            step = float(fault["trickle"]) / max(len(payload), 1)
            for b in payload:
                self.wfile.write(bytes([b]))
                self.wfile.flush()
                time.sleep(step)
            self.answered()
        else:
            self.send_json(200, result)

    do_GET = do_POST = do_PUT = handle_any


class Server(ThreadingHTTPServer):
    """A thread per connection, with a listen backlog that takes a burst of connections."""
    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True


def listen(first, port):
    """One more listening port sharing first's state (a separate source), served in a thread."""
    server = Server(("127.0.0.1", port), Handler)
    server.state = first.state
    server.ssl_context = first.ssl_context
    if server.ssl_context:
        server.socket = server.ssl_context.wrap_socket(server.socket, server_side=True)
    with first.state.lock:
        first.state.listeners.append(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _count(values):
    out = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--org-id", default="5f3b8c2e-1d4a-4e6b-9c7d-0a1b2c3d4e5f")
    ap.add_argument("--access-key-id", default="standin-access-key")
    ap.add_argument("--api-secret", default="standin-api-secret")
    ap.add_argument("--state-file", help="load accepted measurements from it at start, save them on SIGTERM")
    ap.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM) ...")
    ap.add_argument("--tls-key", help="... and this key")
    ap.add_argument("--latency-ms", type=float, default=0, help="per-request latency (see the header)")
    ap.add_argument("--bandwidth-bytes-per-s", type=float, default=0, help="per-connection bandwidth, 0: unlimited")
    ap.add_argument("--rate-limit", action="store_true", help="enforce m3ter's published Ingest API limits")
    ap.add_argument("--rate-limit-model", choices=("fixed", "sliding", "token_bucket"), default="fixed",
                    help="how the per-second limit is counted (standin_limits.py)")
    ap.add_argument("--source-ports", type=int, default=0,
                    help="listen on this many more ports, each a separate source (written to PORT_FILE.sources)")
    args = ap.parse_args()

    defaults = {"latency_ms": args.latency_ms, "bandwidth_bytes_per_s": args.bandwidth_bytes_per_s,
                "rate_limit": {"model": args.rate_limit_model} if args.rate_limit else None}
    server = Server(("127.0.0.1", args.port), Handler)
    server.state = State(args.org_id, args.access_key_id, args.api_secret, defaults)
    server.ssl_context = None
    if args.state_file and os.path.exists(args.state_file):
        server.state.load(args.state_file)

    def stop(signum, frame):
        if args.state_file:
            server.state.save(args.state_file)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    if args.tls_cert:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        server.ssl_context = ctx
    port = server.server_address[1]
    extra = [listen(server, 0).server_address[1] for _ in range(args.source_ports)]
    if args.port_file:
        if extra:
            with open(args.port_file + ".sources.tmp", "w") as f:
                f.write("\n".join(str(p) for p in extra) + "\n")
            os.replace(args.port_file + ".sources.tmp", args.port_file + ".sources")
        with open(args.port_file + ".tmp", "w") as f:
            f.write(str(port))
        os.replace(args.port_file + ".tmp", args.port_file)
    print("m3ter stand-in listening on 127.0.0.1:%s" % ", ".join(str(p) for p in [port] + extra), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
