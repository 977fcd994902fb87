"""m3ter's rate limits for the stand-in, in each shape m3ter might count them.

m3ter documents 50 requests a second per Organization and 5,000 requests per rolling
5 minutes per source address, but not how it counts "a second". So the stand-in can
count it three ways, chosen per run or per test ("model" in the rate_limit config):

  fixed         per wall-clock second: once per_second requests were admitted in
                the second, 429 until it ends (the default)
  sliding       any per_second admissions within one second of each other: a
                request is refused while per_second were admitted in the second
                before its arrival
  token_bucket  a bucket of "burst" tokens (default 1) refilled at per_second a
                second; each admission takes one, none left is a 429

"jitter_ms" delays each request's arrival time as the limits see it by a random
0..jitter_ms (seeded by "seed", default 1), and one request in "stall_every" (0:
never) by "stall_ms" more, as a real network does. The per-source budget
(window_max requests in any "window" seconds) applies under every model.

Only admitted requests count. Not locked itself: the caller holds the stand-in's lock.
Python standard library only.
"""
import random
from collections import deque

# m3ter's published Ingest API limits (what "rate_limit": true means)
DEFAULTS = {"per_second": 50, "window": 300, "window_max": 5000, "model": "fixed", "burst": 1,
            "jitter_ms": 0, "stall_every": 0, "stall_ms": 0, "seed": 1}
MODELS = ("fixed", "sliding", "token_bucket")


class RateLimits:
    """The per-organization per-second limit and the per-source rolling budget."""

    def __init__(self, config):
        unknown = set(config) - set(DEFAULTS)
        if unknown:
            raise ValueError("unknown rate_limit keys: %s" % ", ".join(sorted(unknown)))
        c = dict(DEFAULTS, **config)
        if c["model"] not in MODELS:
            raise ValueError("rate_limit model must be one of %s" % ", ".join(MODELS))
        self.config = c
        self.per_second = int(c["per_second"])
        self.window = float(c["window"])
        self.window_max = int(c["window_max"])
        self.model = c["model"]
        self.burst = max(1, int(c["burst"]))
        self.rng = random.Random(c["seed"])
        self.arrivals = 0
        self.org_second = {}    # fixed: org -> {wall-clock second: admitted in it}
        self.org_times = {}     # sliding: org -> deque of admission times
        self.org_bucket = {}    # token_bucket: org -> [tokens, at]
        self.source_times = {}  # source -> deque of admission times within the window

    @staticmethod
    def parse(value):
        """The rate_limit config value: true/{} for the defaults, a dict to override, null/false for none."""
        if value is None or value is False:
            return None
        if value is True:
            return RateLimits({})
        if isinstance(value, dict):
            return RateLimits(value)
        raise ValueError("rate_limit must be true, false, null or an object")

    def describe(self):
        return dict(self.config)

    def arrival(self, t):
        """When the limits see a request that reached the server at t: later by the jitter."""
        c = self.config
        self.arrivals += 1
        delay = self.rng.uniform(0, c["jitter_ms"]) if c["jitter_ms"] else 0.0
        if c["stall_every"] and self.arrivals % int(c["stall_every"]) == 0:
            delay += c["stall_ms"]
        return t + delay / 1000.0

    def _org_refuses(self, org, t):
        """Would the organization's per-second limit refuse an arrival at t?"""
        if self.model == "fixed":
            return self.org_second.get(org, {}).get(int(t), 0) >= self.per_second
        if self.model == "sliding":
            times = self.org_times.setdefault(org, deque())
            return sum(1 for x in times if t - 1.0 < x <= t) >= self.per_second
        tokens, at = self.org_bucket.get(org, (float(self.burst), t))
        tokens = min(float(self.burst), tokens + max(0.0, t - at) * self.per_second)
        self.org_bucket[org] = [tokens, max(at, t)]
        return tokens < 1.0

    def _org_admit(self, org, t):
        if self.model == "fixed":
            # counted per second, so an arrival jitter put late in an earlier second counts there
            seconds = self.org_second.setdefault(org, {})
            seconds[int(t)] = seconds.get(int(t), 0) + 1
            for old in [s for s in seconds if s < int(t) - 2]:
                del seconds[old]
        elif self.model == "sliding":
            times = self.org_times.setdefault(org, deque())
            times.append(t)
            while times and times[0] <= t - 2.0:    # arrivals out of order are kept a while longer
                times.popleft()
        else:
            self.org_bucket[org][0] -= 1.0

    def admit(self, org, source, t):
        """None when a request arriving at t may pass (and counts it), else which limit refused it."""
        times = self.source_times.setdefault(source, deque())
        while times and times[0] <= t - self.window:
            times.popleft()
        if self._org_refuses(org, t):
            return "organization"
        if len(times) >= self.window_max:
            return "source"
        self._org_admit(org, t)
        times.append(t)
        return None
