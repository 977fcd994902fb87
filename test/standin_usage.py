"""m3ter's usage query (the Data Explorer) over what the stand-in stored: its model.

m3ter_standin.py imports this module.  It adds:
  POST /organizations/{org}/usage/query     startDate (inclusive) and endDate
        (exclusive) on the measurements' ts, meterIds and accountIds (ids, not
        codes), aggregations [{meterId, fieldCode, fieldType, function}], groups
        ([{groupType: ACCOUNT}, {groupType: TIME, frequency: DAY|HOUR}]) and limit
        (1..20,000).  It sums (or counts...) the stored measurements, so rows the
        enrichment dropped are not there, and answers {"data": [...], "hasMoreData"}
        newest first, at most limit items (and at most the "limit" control below).
        Limited as m3ter's Data Explorer is: a token bucket of 10 refilled at one
        request a second; over it, 429 with Retry-After: 1.
Control (no auth):
  POST /_control/usage   {"limit": n (the most items any answer holds), "rate_limit":
        {"per_second": 1, "burst": 10} or null (none), "lose": [uid, ...] (stored
        measurements dropped silently: no event), "change": {uid: {map: {key: value}}}
        (stored measurements' values changed), "shape": "flat" | "grouped" | "fieldkey"
        (the rows' shape: below; {"groups": {"ACCOUNT", "TIME"}, "meterId", "aggregation":
        {"fieldCode", "function"}, "result"}; {"accountId", "meterId", "timestamp",
        "<field>_<function>": value})}
  GET  /_control/usage   {"queries": [{"t", "status", "items", "hasMoreData", "body"}]}

The shape of a row of "data", which m3ter does not publish, is assumed (the README
says so): one row per group and aggregation,
  {"accountId", "meterId", "timestamp": start of the day (or hour), "fieldCode",
   "function", "value"}
Accounts that a measurement names but the stand-in does not know are created as
m3ter does ("<code>-autocreated").  Python standard library only.
"""

import json
import threading
import time
import uuid
from datetime import datetime, timezone

MAX_LIMIT = 20000
FUNCTIONS = ("SUM", "MIN", "MAX", "COUNT", "LATEST", "MEAN", "UNIQUE")
NUMERIC_MAPS = ("measure", "cost", "income")
DEFAULT_RATE = {"per_second": 1.0, "burst": 10}


class ApiError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def _parse_time(value, what):
    if not isinstance(value, str):
        raise ApiError(400, "%s must be an ISO 8601 date-time" % what)
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "%s must be an ISO 8601 date-time" % what)
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t


def _iso(t):
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Usage:
    """The usage query of one stand-in state."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.limit = MAX_LIMIT
            self.shape = "flat"
            self.rate = dict(DEFAULT_RATE)
            self.tokens = float(self.rate["burst"])
            self.refilled = time.time()
            self.queries = []
            self.changes = 0
            self.index, self.index_key = {}, None

    # ---- the Data Explorer's limit ----
    def _admit(self):
        with self.lock:
            if self.rate is None:
                return True
            now = time.time()
            self.tokens = min(float(self.rate["burst"]),
                              self.tokens + (now - self.refilled) * self.rate["per_second"])
            self.refilled = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return True
            return False

    def _log(self, status, items=0, more=False, body=None):
        with self.lock:
            self.queries.append({"t": time.time(), "status": status, "items": items,
                                 "hasMoreData": more, "body": body})

    # ---- the API ----
    def query(self, state, accounts, body):
        """Answer POST .../usage/query; accounts is the enrichment's code -> account map"""
        if not self._admit():
            self._log(429)
            raise ApiError(429, "Too Many Requests: the Data Explorer allows 1 request a second")
        try:
            doc = json.loads(body)
        except ValueError:
            self._log(400)
            raise ApiError(400, "Malformed JSON request body")
        try:
            out = self._answer(state, accounts, doc)
        except ApiError as e:
            self._log(e.status, body=doc)
            raise
        self._log(200, len(out["data"]), out["hasMoreData"], doc)
        return out

    def _answer(self, state, accounts, doc):
        if not isinstance(doc, dict):
            raise ApiError(400, "The body must be an object")
        start = _parse_time(doc.get("startDate"), "startDate")
        end = _parse_time(doc.get("endDate"), "endDate")
        if start >= end:
            raise ApiError(400, "startDate must be before endDate")
        limit = doc.get("limit", MAX_LIMIT)
        if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ApiError(400, "limit must be 1 to %d" % MAX_LIMIT)
        meter_ids = doc.get("meterIds")
        account_ids = doc.get("accountIds")
        for key, ids in (("meterIds", meter_ids), ("accountIds", account_ids)):
            if ids is not None and (not isinstance(ids, list) or
                                    not all(isinstance(i, str) and len(i) == 36 for i in ids)):
                raise ApiError(400, "%s must be an array of ids (UUIDs, not codes)" % key)
        aggregations = doc.get("aggregations")
        if not isinstance(aggregations, list) or not aggregations:
            raise ApiError(400, "aggregations must be a non-empty array")
        for a in aggregations:
            if not isinstance(a, dict) or not isinstance(a.get("meterId"), str) or \
                    not isinstance(a.get("fieldCode"), str) or a.get("function") not in FUNCTIONS or \
                    a.get("fieldType") not in ("DIMENSION", "MEASURE"):
                raise ApiError(400, "each aggregation needs meterId, fieldCode, fieldType and function")
        group_account = group_time = None
        for g in doc.get("groups") or []:
            if not isinstance(g, dict):
                raise ApiError(400, "groups must be objects")
            if g.get("groupType") == "ACCOUNT":
                group_account = True
            elif g.get("groupType") == "TIME":
                if g.get("frequency") not in ("DAY", "HOUR"):
                    raise ApiError(400, "this stand-in groups time by DAY or HOUR")
                group_time = g["frequency"]
            else:
                raise ApiError(400, "unsupported groupType %s" % g.get("groupType"))

        cells = {}
        account_set = set(account_ids) if account_ids is not None else None
        for mid, per_meter in self._by_meter(state, accounts).items():
            if meter_ids is not None and mid not in meter_ids:
                continue
            for account_id, ts, m in per_meter:
                if not start <= ts < end or (account_set is not None and account_id not in account_set):
                    continue
                self._add(cells, m, mid, account_id, ts, group_account, group_time, start, aggregations)
        return self._rows(cells, limit)

    def _by_meter(self, state, accounts):
        """The stored measurements by meter id, as (account id, ts, measurement); kept
        until the store changes (a benchmark queries a million of them a hundred times)"""
        with state.lock:
            key = (len(state.measurements), state.accepted_total, self.changes)
            if self.index_key == key:
                return self.index
            meters = {mt["code"]: mt for mt in state.meters}
            stored = list(state.measurements.values())
        meter_id = {code: mt.get("id") or str(uuid.uuid5(uuid.NAMESPACE_URL, "meter:" + code))
                    for code, mt in meters.items()}
        index = {}
        for m in stored:
            mid = meter_id.get(m["meter"])
            if mid is not None:
                index.setdefault(mid, []).append((accounts(m["account"])["id"], _parse_time(m["ts"], "ts"), m))
        self.index, self.index_key = index, key
        return index

    @staticmethod
    def _add(cells, m, mid, account_id, ts, group_account, group_time, start, aggregations):
        if group_time == "DAY":
            bucket = ts.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        elif group_time == "HOUR":
            bucket = ts.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
        else:
            bucket = start
        for a in aggregations:
            if a["meterId"] != mid:
                continue
            value = None
            for name in NUMERIC_MAPS:
                if a["fieldCode"] in (m.get(name) or {}):
                    value = m[name][a["fieldCode"]]
                    break
            if value is None:
                continue
            key = (account_id if group_account else None, mid, bucket, a["fieldCode"], a["function"])
            cells.setdefault(key, []).append(float(value))

    def _rows(self, cells, limit):
        rows = []
        for (account_id, mid, bucket, field, function), values in cells.items():
            value = {"SUM": sum, "MIN": min, "MAX": max, "COUNT": len, "LATEST": lambda v: v[-1],
                     "MEAN": lambda v: sum(v) / len(v), "UNIQUE": lambda v: len(set(v))}[function](values)
            rows.append((_iso(bucket), account_id or "", field, self._row(mid, account_id, bucket, field,
                                                                          function, value)))
        rows.sort(key=lambda r: r[:3], reverse=True)
        cap = min(limit, self.limit)
        return {"data": [r[3] for r in rows[:cap]], "hasMoreData": len(rows) > cap}

    def _row(self, mid, account_id, bucket, field, function, value):
        """One row of "data" in the shape chosen (m3ter does not publish one)"""
        if self.shape == "grouped":
            groups = {"TIME": _iso(bucket)[:10]}   # a day, no zone
            if account_id is not None:
                groups["ACCOUNT"] = account_id
            return {"groups": groups, "meterId": mid, "aggregation": {"fieldCode": field, "function": function},
                    "result": value}
        if self.shape == "fieldkey":
            row = {"meterId": mid, "timestamp": _iso(bucket), "%s_%s" % (field, function.lower()): value}
        else:
            row = {"meterId": mid, "timestamp": _iso(bucket), "fieldCode": field, "function": function,
                   "value": value}
        if account_id is not None:
            row["accountId"] = account_id
        return row

    # ---- control ----
    def control(self, state, method, path, doc):
        if path != "/_control/usage":
            return None
        if method != "POST":
            with self.lock:
                return {"queries": list(self.queries), "limit": self.limit, "rate_limit": self.rate}
        with self.lock:
            if "limit" in doc:
                self.limit = max(1, min(int(doc["limit"]), MAX_LIMIT))
            if "shape" in doc:
                if doc["shape"] not in ("flat", "grouped", "fieldkey"):
                    raise ApiError(400, "shape must be flat, grouped or fieldkey")
                self.shape = doc["shape"]
            if "rate_limit" in doc:
                self.rate = dict(DEFAULT_RATE, **doc["rate_limit"]) if doc["rate_limit"] else None
                self.tokens = float(self.rate["burst"]) if self.rate else 0.0
                self.refilled = time.time()
        lost = changed = 0
        with state.lock:
            for uid in doc.get("lose", []):
                lost += state.measurements.pop(uid, None) is not None
            for uid, maps in (doc.get("change") or {}).items():
                m = state.measurements.get(uid)
                if m is None:
                    continue
                m = json.loads(json.dumps(m))
                for name, values in maps.items():
                    m.setdefault(name, {}).update(values)
                state.measurements[uid] = m
                changed += 1
        with self.lock:
            self.changes += 1
        return {"ok": True, "lost": lost, "changed": changed}
