"""What m3ter does after it answers {"result": "accepted"}: the stand-in's model.

m3ter_standin.py imports this module.  It adds:
  an asynchronous enrichment stage   a background thread that looks at each accepted
        measurement after a configurable delay and drops it (removes it from the
        stored measurements) when its meter is unknown (UndefinedMeter), when a data
        field of its meter is absent (MissingField) or, under the "reject" account
        rule, when its account is unknown (InvalidAccountCode).  Under the default
        "autocreate" rule an unknown account code creates the account
        "<code>-autocreated", as m3ter does.  A re-sent uid raises DuplicateUid and
        drops nothing (the original stands).  Every one raises an
        ingest.validation.failure event with its own log file.
  GET  /organizations/{org}/events          eventName filter, pageSize, nextToken;
        oldest first (or newest first when so configured); nextToken is an opaque
        position that stays valid
  GET  /organizations/{org}/measurements/failedIngest/getDownloadUrl?file=...
        -> {"url": ...}: a URL on the stand-in, valid for 5 minutes, that refuses a
        request carrying an Authorization header (as presigned S3 URLs do)
  GET  /_files/{file}?expires=...&signature=...   the log file itself
  GET  /organizations/{org}/accounts        codes (repeatable or comma-separated),
        ids, pageSize, nextToken
Control (no auth):
  POST /_control/enrichment  {"enabled": bool, "delay": s, "meters": [code or
        {"code", "dataFields"}], "account_rule": "autocreate" | "reject" | "accept",
        "url_ttl": s, "newest_first": bool, "event_as_string": bool (m3terEvent
        serialized into a JSON string)}
  POST /_control/accounts    {"accounts": [code, ...]}   create accounts; {"recreate": [code, ...]}
        deletes and creates them again, with new ids (POST /_control/usage then, so that the
        usage query sees the new ids)
  GET  /_control/accounts    every account
  GET  /_control/events      every event, with its log
  POST /_control/events      {"event_data": {...}, "log": "text"}: an event of another layout
  GET  /_control/enrichment  {"pending": n, "dropped": {uid: errorType}, ...}

The shapes m3ter does not publish are assumed as follows (the README says so too):
  event   {"id", "eventName": "ingest.validation.failure", "eventTime", "dtActioned": null,
           "m3terEvent": {"eventData": {"errorType", "message",
                                        "getDownloadUrl": "<file path>"}}}
  log     {"errorType", "errorMessage", "measurement": {<the measurement as sent>}}
The enrichment is off until enabled, so the other tests see the plain Ingest API.
Python standard library only.
"""

import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from datetime import datetime, timezone
from urllib.parse import parse_qs, quote

EVENT_NAME = "ingest.validation.failure"
URL_TTL = 300
MAX_PAGE = 100
MAP_OF_CATEGORY = {"WHO": "who", "WHERE": "where", "WHAT": "what", "OTHER": "other",
                   "METADATA": "metadata", "MEASURE": "measure", "INCOME": "income", "COST": "cost"}

_SIGNING_KEY = secrets.token_bytes(16)


def page_size(query):
    """A list's pageSize: 1 to 100 as m3ter documents (10 when not given), else a 400"""
    raw = query.get("pageSize", ["10"])[0]
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise ApiError(400, "pageSize must be between 1 and %d" % MAX_PAGE)
    return int(raw)


class ApiError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def _iso(t=None):
    return datetime.fromtimestamp(t if t is not None else time.time(), timezone.utc) \
        .strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def _sign(file, expires):
    return hmac.new(_SIGNING_KEY, ("%s|%d" % (file, expires)).encode(), hashlib.sha256).hexdigest()


class Enrichment:
    """The enrichment stage, events, log files and accounts of one stand-in state."""

    def __init__(self):
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.generation = 0
        self.thread = None
        self.reset()

    def reset(self):
        with self.lock:
            self.generation += 1
            self.enabled = False
            self.delay = 0.5
            self.extra_meters = {}
            self.account_rule = "autocreate"
            self.url_ttl = URL_TTL
            self.newest_first = False
            self.event_as_string = False
            self.queue = []             # (due, generation, measurement, duplicate)
            self.events = []
            self.files = {}
            self.accounts = {}          # code -> account
            self.dropped = {}           # uid -> errorType
            self.duplicate_events = 0

    # ---- called by m3ter_standin.py, under the state's lock ----
    def ingested(self, state, m, duplicate):
        """An accepted measurement (or a re-sent uid) enters the enrichment queue."""
        if not self.enabled:
            return
        with self.lock:
            self.queue.append((time.time() + self.delay, self.generation, m, duplicate))
            self.cond.notify()
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, args=(state,), daemon=True)
                self.thread.start()

    # ---- the background stage ----
    def _run(self, state):
        while True:
            with self.lock:
                while not self.queue:
                    self.cond.wait()
                due = self.queue[0][0]
                wait = due - time.time()
                if wait > 0:
                    self.cond.wait(min(wait, 0.5))
                    continue
                now = time.time()
                batch = [e for e in self.queue if e[0] <= now]
                self.queue = [e for e in self.queue if e[0] > now]
                generation = self.generation
            for _, gen, m, duplicate in batch:
                if gen == generation:
                    self._enrich(state, m, duplicate)

    def _meter(self, state, code):
        with state.lock:
            for mt in state.meters:
                if mt.get("code") == code:
                    return mt
        return self.extra_meters.get(code)

    def _enrich(self, state, m, duplicate):
        if duplicate:
            self._raise(m, "DuplicateUid", "A measurement with uid %s was already ingested; "
                        "this one was not ingested" % m["uid"])
            with self.lock:
                self.duplicate_events += 1
            return
        meter = self._meter(state, m.get("meter"))
        failure = None
        if meter is None:
            failure = ("UndefinedMeter", "No meter with code %s is defined" % m.get("meter"))
        else:
            for f in meter.get("dataFields") or []:
                section = m.get(MAP_OF_CATEGORY.get(f.get("category"), "")) or {}
                if f.get("code") not in section:
                    failure = ("MissingField", "Field %s (%s) of meter %s is missing"
                               % (f.get("code"), f.get("category"), meter["code"]))
                    break
        if failure is None:
            failure = self._account(m.get("account"))
        if failure is None:
            return
        with state.lock:
            state.measurements.pop(m["uid"], None)
        with self.lock:
            self.dropped[m["uid"]] = failure[0]
        self._raise(m, failure[0], failure[1])

    def _account(self, code):
        with self.lock:
            if code in self.accounts:
                return None
            if self.account_rule == "autocreate":
                self._create_account(code, code + "-autocreated")
                return None
        if self.account_rule == "reject":
            return ("InvalidAccountCode", "No account with code %s exists" % code)
        return None

    def account_at_ingest(self, code):
        """Without the enrichment stage, an unknown account code creates its account at
        ingest, as m3ter's default rule does (with it, the stage decides)"""
        with self.lock:
            if not self.enabled and code not in self.accounts:
                self._create_account(code, code + "-autocreated")

    def account_for(self, code):
        """The account of a code for the usage query; one m3ter does not know has an id
        no listing returns"""
        with self.lock:
            return self.accounts.get(code) or {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, "account:" + code))}

    def _create_account(self, code, name):
        self.accounts[code] = {"id": str(uuid.uuid4()), "code": code, "name": name,
                               "dtCreated": _iso(), "version": 1}

    def _raise(self, m, error_type, message):
        """Write the failure's log file and raise its event."""
        event_id = str(uuid.uuid4())
        t = time.time()
        file = "failed-ingest/%s/%s.json" % (_iso(t)[:10], event_id)
        log = {"errorType": error_type, "errorMessage": message, "measurement": m}
        event = {"id": event_id, "eventName": EVENT_NAME, "eventTime": _iso(t), "dtActioned": None,
                 "m3terEvent": {"eventData": {"errorType": error_type, "message": message,
                                              "getDownloadUrl": file}}}
        with self.lock:
            self.files[file] = json.dumps(log).encode()
            self.events.append(event)

    # ---- the API ----
    def route(self, handler, method, path, query):
        """Answer an Events / failed-ingest / accounts request, or return None."""
        if method != "GET":
            return None
        if path.endswith("/events"):
            handler.check_bearer(path)
            return self.list_events(query)
        if path.endswith("/measurements/failedIngest/getDownloadUrl"):
            handler.check_bearer(path)
            return self.download_url(handler, query)
        if path.endswith("/accounts"):
            handler.check_bearer(path)
            return self.list_accounts(query)
        return None

    def list_events(self, query):
        name = query.get("eventName", [None])[0]
        size = page_size(query)
        start = _token_index(query.get("nextToken", [""])[0])
        with self.lock:
            events = [e for e in self.events if name is None or e["eventName"] == name]
            if self.newest_first:
                events.reverse()
        page = events[start:start + size]
        if self.event_as_string:
            page = [dict(e, m3terEvent=json.dumps(e["m3terEvent"])) for e in page]
        out = {"data": page}
        if start + size < len(events):
            out["nextToken"] = _token(start + size)
        return out

    def download_url(self, handler, query):
        file = query.get("file", [""])[0]
        with self.lock:
            if file not in self.files:
                raise ApiError(404, "No failed-ingest file %s" % file)
            expires = int(time.time() + self.url_ttl)
        host = handler.headers.get("Host", "127.0.0.1")
        return {"url": "http://%s/_files/%s?expires=%d&signature=%s"
                       % (host, quote(file), expires, _sign(file, expires))}

    def serve_file(self, handler, path, query):
        """The presigned download: no Authorization header, signature and expiry checked."""
        if handler.headers.get("Authorization"):
            raise ApiError(400, "Only one auth mechanism allowed; a presigned URL takes no Authorization header")
        file = path[len("/_files/"):]
        try:
            expires = int(query.get("expires", ["0"])[0])
        except ValueError:
            expires = 0
        if not hmac.compare_digest(query.get("signature", [""])[0], _sign(file, expires)):
            raise ApiError(403, "SignatureDoesNotMatch")
        if expires < time.time():
            raise ApiError(403, "Request has expired")
        with self.lock:
            body = self.files.get(file)
        if body is None:
            raise ApiError(404, "NoSuchKey")
        return body

    def list_accounts(self, query):
        codes = set()
        for v in query.get("codes", []):
            codes.update(c for c in v.split(",") if c)
        ids = set()
        for v in query.get("ids", []):
            ids.update(c for c in v.split(",") if c)
        size = page_size(query)
        start = _token_index(query.get("nextToken", [""])[0])
        with self.lock:
            accounts = [a for a in self.accounts.values()
                        if (not codes or a["code"] in codes) and (not ids or a["id"] in ids)]
        page = accounts[start:start + size]
        out = {"data": page}
        if start + size < len(accounts):
            out["nextToken"] = _token(start + size)
        return out

    # ---- control ----
    def control(self, method, path, doc):
        if path == "/_control/enrichment" and method == "POST":
            with self.lock:
                if "enabled" in doc:
                    self.enabled = bool(doc["enabled"])
                if "delay" in doc:
                    self.delay = float(doc["delay"])
                if "account_rule" in doc:
                    if doc["account_rule"] not in ("autocreate", "reject", "accept"):
                        raise ApiError(400, "account_rule must be autocreate, reject or accept")
                    self.account_rule = doc["account_rule"]
                if "url_ttl" in doc:
                    self.url_ttl = float(doc["url_ttl"])
                if "newest_first" in doc:
                    self.newest_first = bool(doc["newest_first"])
                if "event_as_string" in doc:
                    self.event_as_string = bool(doc["event_as_string"])
                for mt in doc.get("meters", []):
                    mt = {"code": mt} if isinstance(mt, str) else mt
                    self.extra_meters[mt["code"]] = mt
            return {"ok": True}
        if path == "/_control/enrichment":
            with self.lock:
                return {"enabled": self.enabled, "pending": len(self.queue), "events": len(self.events),
                        "dropped": dict(self.dropped), "duplicate_events": self.duplicate_events}
        if path == "/_control/accounts" and method == "POST":
            with self.lock:
                for code in doc.get("accounts", []):
                    if code not in self.accounts:
                        self._create_account(code, code)
                for code in doc.get("recreate", []):
                    self._create_account(code, code)   # deleted and created again: a new id
            return {"ok": True}
        if path == "/_control/accounts":
            with self.lock:
                return list(self.accounts.values())
        if path == "/_control/events" and method == "POST":
            # an event of another layout: {"event_data": {...}, "log": "the log file's text"}
            event_id = str(uuid.uuid4())
            file = "failed-ingest/%s/%s.json" % (_iso()[:10], event_id)
            event = {"id": event_id, "eventName": EVENT_NAME, "eventTime": _iso(), "dtActioned": None,
                     "m3terEvent": {"eventData": dict(doc.get("event_data", {}), getDownloadUrl=file)}}
            with self.lock:
                self.files[file] = doc["log"].encode()
                self.events.append(event)
            return {"id": event_id}
        if path == "/_control/events":
            with self.lock:
                return [dict(e, log=_log_text(self.files[e["m3terEvent"]["eventData"]["getDownloadUrl"]]))
                        for e in self.events]
        return None


def _log_text(raw):
    """A log file as JSON when it is one document, else as its text (JSON lines)"""
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode()


def _token(index):
    return "p%x" % (index * 7919)


def _token_index(token):
    if not token:
        return 0
    try:
        n = int(token[1:], 16)
    except ValueError:
        raise ApiError(400, "Invalid nextToken")
    if token[0] != "p" or n % 7919:
        raise ApiError(400, "Invalid nextToken")
    return n // 7919


def parse_query(query):
    return parse_qs(query, keep_blank_values=True)
