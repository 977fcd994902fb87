"""m3ter's per-second limit in each shape it might have, and a pacer that holds under all.

m3ter does not say how it counts "a second". The stand-in's limiter models
(test/standin_limits.py) admit and refuse exactly as specified at chosen instants;
the pacer never gives more send slots than its budget (50 x 0.96) in any trailing
second of its own slots; and a burst through a sliding-window and a token-bucket
stand-in with arrival jitter is delivered exactly once."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from m3ter_tap import *  # noqa: E402,F401,F403
from standin_limits import RateLimits  # noqa: E402


def run(model, times, **config):
    """Which of the arrivals at the given instants a fresh limiter admits"""
    limits = RateLimits(dict(config, model=model))
    return [limits.admit("org", "src", t) is None for t in times]


# fixed: per wall-clock second
got = run("fixed", [10.0 + i * 0.019 for i in range(51)] + [11.0])
ok(all(got[:50]) and not got[50] and got[51], "fixed window: 50 in a second, the 51st refused, the next second admits")
# an arrival jitter put late in the second before counts there, not against this one
got = run("fixed", [0.991, 1.001, 0.995, 1.002, 1.003, 1.004], per_second=3)
ok(got == [True] * 5 + [False], "fixed window: arrivals out of order are counted in their own seconds", got)
# sliding: any 50 within one second
got = run("sliding", [10.5 + i * 0.01 for i in range(50)] + [11.2, 11.49, 11.51])
ok(all(got[:50]) and got[50:] == [False, False, True],
   "sliding window: 50 in (10.5, 10.99] refuse 11.2 and 11.49 (across the wall-clock second), admit 11.51", got[50:])
# token bucket: burst tokens, refilled at 50 a second
got = run("token_bucket", [0.0] * 6 + [0.02, 0.03, 0.045], burst=5)
ok(got == [True] * 5 + [False, True, False, True], "token bucket (burst 5): 5 at once, then one token every 20 ms",
   got)
got = run("token_bucket", [0.0, 0.01, 0.02, 0.041], burst=1)
ok(got == [True, False, True, True], "token bucket (burst 1): one request every 20 ms", got)
# the per-source budget under every model
for model in ("fixed", "sliding", "token_bucket"):
    got = run(model, [i * 0.1 for i in range(4)] + [30.05], window=30, window_max=3, burst=50)
    ok(got == [True, True, True, False, True], "%s: the 5-minute budget (scaled: 3 in 30 s) refuses the 4th" % model,
       got)
# jitter is seeded: the same seed, the same arrivals
a = RateLimits({"jitter_ms": 20, "seed": 7})
b = RateLimits({"jitter_ms": 20, "seed": 7})
ok([a.arrival(1.0) for _ in range(5)] == [b.arrival(1.0) for _ in range(5)], "arrival jitter is seeded")

# over HTTP: the configured model answers 429 with m3ter's body
reset()
standin("POST", "/_control/config", {"rate_limit": {"model": "sliding", "per_second": 2}})
r = psql("SET m3ter.max_requests_per_second = 0; SET m3ter.max_retries = 0;\n" +
         "\n".join("SELECT m3ter_submit('{\"meter\":\"m\",\"account\":\"a\",\"ts\":\"2024-01-02T03:04:05Z\"}');"
                   for _ in range(3)), check=False)
ok(r.returncode != 0 and "HTTP status 429" in r.stderr,
   "a sliding-window stand-in refuses the third request within a second with a 429", r.stderr)
is_(standin("GET", "/_control/summary")["rate_limit"]["model"], "sliding", "its summary names the model")

# the pacer: never more than its budget in any trailing second of its own slots
reset()
standin("POST", "/_control/config", {"rate_limit": {"model": "sliding", "jitter_ms": 5}})
# four sessions submitting at once ask for more than the limit allows
sessions = [psql_async("SET m3ter.max_retries = 8; DO $$ BEGIN FOR i IN 1..50 LOOP "
                       "PERFORM m3ter_submit(jsonb_build_object('meter', 'm', 'account', 'a', "
                       "'ts', '2024-01-02T03:04:05Z', 'uid', 'pace-%d-' || i)); END LOOP; END $$" % k)
            for k in range(4)]
for p in sessions:
    p.wait()
ok(all(p.returncode == 0 for p in sessions), "200 submits from four sessions at once succeed")
slots = [float(x) for x in psql("SELECT extract(epoch FROM s) FROM unnest(m3ter.pacing_slots()) s").split()]
worst = max(sum(1 for u in slots if t - 1.0 < u <= t) for t in slots)
note("%d slots recorded; at most %d in any trailing second" % (len(slots), worst))
ok(len(slots) >= 200 and worst <= 48, "no trailing second of the pacer's slots holds more than 48 (50 x 0.96)",
   "%d slots, %d in the worst second" % (len(slots), worst))

# a burst through each model with arrival jitter, delivered exactly once
for name, config in (("sliding window", {"model": "sliding", "jitter_ms": 5, "stall_every": 7, "stall_ms": 30}),
                     ("token bucket, burst 5", {"model": "token_bucket", "burst": 5, "jitter_ms": 5})):
    reset()
    set_and_reload(worker_enabled="off")
    standin("POST", "/_control/config", {"rate_limit": config})
    insert_usage(20000, "burst-")
    set_and_reload(worker_enabled=None)
    ok(wait_until(lambda: outbox_counts()["accepted"] == 20000, timeout=120),
       "%s: all 20,000 rows accepted" % name, outbox_counts())
    is_(len(stored_uids("burst-")), 20000, "%s: the stand-in stored every uid" % name)
    is_(standin("GET", "/_control/summary")["duplicates"], 0, "%s: none twice" % name)
    note("%s: %d 429s" % (name, sum(1 for r in ingest_requests() if r["status"] == 429)))
standin("POST", "/_control/config", {"rate_limit": None})
done()
