#!/usr/bin/env python3
"""A local stand-in for m3ter's Config and Ingest APIs, for tests and demos.

It behaves like m3ter for what the extension uses:
  POST /oauth/token                         Basic credentials -> expiring bearer token
  POST /organizations/{org}/measurements    validated, recorded by uid (stored once)
  POST /organizations/{org}/meters          validated like Create Meter, recorded
  GET  /organizations/{org}/meters          paginated with pageSize / nextToken
  GET  /organizations/{org}/organizationconfig
  + enrichment after "accepted", Events, failed-ingest downloads, accounts: standin_enrichment.py
Errors are m3ter's statuses with a JSON body {"message": ...}: 400 for bodies that
break the API's rules, 403 for an unknown org, a bad or expired token, or an ingest
payload of 512,000 bytes or more.

Tests steer it through /_control (no auth):
  POST /_control/reset                      forget all but issued tokens, back to defaults
  POST /_control/faults   {"faults":[...], "clear": bool}  queue faults (after
        dropping the queued ones when "clear" is true); each has "match" (a path
        substring, default any), "count" (default 1) and one of: "status" (with
        optional "retry_after", "body"), "delay" (seconds before answering),
        "drop" (close without answering), "reset_mid_body" (with "after_accept":
        after storing the measurements), "trickle" (seconds
        spent sending the body), "empty_body", "malformed_body" (with a 200)
  POST /_control/config   {"token_ttl": s, "reject_meters": [...], "expire_tokens":
        true, "rate_limit": {"per_second": n, "window": s, "window_max": n},
        "fast": true, "random_5xx": 0.05}   (fast: accept and count measurements
        without parsing or storing them, for benchmarks; random_5xx: answer that
        share of ingest requests with a random 500, 502, 503 or 504)
  GET  /_control/summary                    counts: accepted, duplicates, requests...
  GET  /_control/measurements               every stored measurement
  GET  /_control/requests                   the request log (time, path, status, n)
  GET  /_control/meters                     every stored meter
  GET  /_control/tokens                     every bearer token it issued

Run: m3ter_standin.py --port-file FILE [--port N] [--state-file FILE]; it prints its
port and serves until killed (with --state-file, SIGTERM saves what it accepted and
the next start loads it).  Python standard library only.
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
from collections import deque
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qs

import standin_enrichment

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


standin_enrichment.ApiError = ApiError  # enrichment, events, accounts (standin_enrichment.py)

def now_iso():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_code(what, value, maxlen=80):
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"{what} must be a non-empty string")
    if len(value) > maxlen:
        raise ApiError(400, f"{what} must be at most {maxlen} characters")
    if value != value.strip(" ") or FORBIDDEN_CODE_CHARS.search(value):
        raise ApiError(400, f"{what} must not contain non-printable or whitespace characters except space, nor start or end with whitespace")


class State:
    """Everything the stand-in remembers; guarded by one lock."""

    def __init__(self, org_id, access_key_id, api_secret):
        self.org_id = org_id
        self.access_key_id = access_key_id
        self.api_secret = api_secret
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        """Back to defaults; issued tokens stay valid (use expire_tokens to drop them)."""
        self.tokens = getattr(self, "tokens", {})
        self.token_ttl = 3600
        self.measurements = {}
        self.duplicates = 0
        self.meters = []
        self.requests = []
        self.faults = []
        self.reject_meters = set()
        self.rate_limit = None
        self.recent = deque()
        self.fast = False
        self.accepted_total = 0
        self.random_5xx = 0.0
        self.stopping = False
        self.enrichment = getattr(self, "enrichment", None) or standin_enrichment.Enrichment()
        self.enrichment.reset()

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

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_json(self, status, obj, extra_headers=None):
        body = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self._headers_buffer.append(b"\r\n")
        self._headers_buffer.append(body)
        self.flush_headers()

    def record(self, status, n=0, nbytes=0, note=None):
        with self.state.lock:
            self.state.requests.append({
                "t": time.time(), "method": self.command, "path": urlsplit(self.path).path,
                "status": status, "measurements": n, "bytes": nbytes, "note": note})

    def take_fault(self, path):
        with self.state.lock:
            for fault in self.state.faults:
                if fault.get("match", "") in path and fault.get("count", 1) > 0:
                    fault["count"] = fault.get("count", 1) - 1
                    if fault["count"] <= 0:
                        self.state.faults.remove(fault)
                    return dict(fault)
        return None

    def reset_mid_body(self, nbytes):
        """Start a 200 answer, then reset the connection halfway through its body."""
        self.record(0, nbytes=nbytes, note="reset mid-body")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "100")
        self.end_headers()
        self.wfile.write(b'{"result":')
        self.wfile.flush()
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.connection.close()

    def apply_fault(self, fault, nbytes):
        """Act out a fault; returns True when the request was answered (or dropped)."""
        if "delay" in fault:
            time.sleep(float(fault["delay"]))
            return False
        if fault.get("drop"):
            self.record(0, nbytes=nbytes, note="dropped")
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return True
        if fault.get("reset_mid_body") and not fault.get("after_accept"):
            self.reset_mid_body(nbytes)
            return True
        if "status" in fault:
            status = int(fault["status"])
            headers = {}
            if "retry_after" in fault:
                headers["Retry-After"] = str(fault["retry_after"])
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
        try:
            grant = json.loads(body or b"{}").get("grant_type")
        except ValueError:
            raise ApiError(400, "Malformed JSON request body")
        if grant != "client_credentials":
            raise ApiError(400, "Unsupported grant_type")
        tok = secrets.token_hex(24)
        with self.state.lock:
            ttl = self.state.token_ttl
            self.state.tokens[tok] = time.time() + ttl
        return {"access_token": tok, "token_type": "bearer", "expires_in": ttl}

    # ---- ingest ----
    def check_rate(self):
        rl = self.state.rate_limit
        if not rl:
            return
        with self.state.lock:
            t = time.time()
            recent = self.state.recent
            window = float(rl.get("window", 300))
            while recent and recent[0] < t - window:
                recent.popleft()
            per_second = sum(1 for x in recent if x >= t - 1.0)
            if per_second >= rl.get("per_second", 50) or len(recent) >= rl.get("window_max", 5000):
                raise ApiError(429, "Too Many Requests")
            recent.append(t)

    def measurements(self, body):
        if self.state.random_5xx and random.random() < self.state.random_5xx:
            raise ApiError(random.choice((500, 502, 503, 504)), "Injected random server error")
        if len(body) >= MAX_PAYLOAD:
            raise ApiError(403, f"Request payload of {len(body)} bytes exceeds the limit of {MAX_PAYLOAD} bytes")
        self.check_rate()
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
        size = min(int(query.get("pageSize", ["10"])[0]), 200)
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
        if out is not None:
            return out
        with st.lock:
            if path == "/_control/reset":
                st.reset()
                return {"ok": True}
            if path == "/_control/faults":
                if doc.get("clear"):
                    st.faults = []
                st.faults.extend(doc.get("faults", []))
                return {"ok": True, "queued": len(st.faults)}
            if path == "/_control/config":
                if "token_ttl" in doc:
                    st.token_ttl = int(doc["token_ttl"])
                if "reject_meters" in doc:
                    st.reject_meters = set(doc["reject_meters"])
                if doc.get("expire_tokens"):
                    st.tokens = {k: 0 for k in st.tokens}
                if "rate_limit" in doc:
                    st.rate_limit = doc["rate_limit"]
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
                }
            if path == "/_control/measurements":
                return list(st.measurements.values())
            if path == "/_control/requests":
                return list(st.requests)
            if path == "/_control/meters":
                return list(st.meters)
            if path == "/_control/tokens":
                return list(st.tokens)
        raise ApiError(404, "no such control endpoint")

    # ---- dispatch ----
    def handle_any(self):
        body = self.read_body() if self.command in ("POST", "PUT") else b""
        parts = urlsplit(self.path)
        path = parts.path
        if path.startswith("/_control/"):
            try:
                self.send_json(200, self.control(path, body))
            except ApiError as e:
                self.send_json(e.status, {"message": e.message})
            return

        fault = self.take_fault(path)
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
                    n = self.measurements(body)
                    result = {"result": "accepted"}
                elif path.endswith("/meters") and self.command == "POST":
                    result = self.create_meter(body)
                elif path.endswith("/meters") and self.command == "GET":
                    result = self.list_meters(parse_qs(parts.query))
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
        else:
            self.send_json(200, result)

    do_GET = do_POST = do_PUT = handle_any


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
    args = ap.parse_args()

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.state = State(args.org_id, args.access_key_id, args.api_secret)
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
    port = server.server_address[1]
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(str(port))
        os.replace(args.port_file + ".tmp", args.port_file)
    print(f"m3ter stand-in listening on 127.0.0.1:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
