/*-------------------------------------------------------------------------
 *
 * pacing.c
 *		m3ter's rate limits, kept for the whole cluster.
 *
 * m3ter limits each API in two ways (M3TER_API.md): requests a second per
 * Organization (50; over it, 429 for the rest of that second) and requests
 * per rolling 5 minutes per source address (5,000 for ingest, 20,000 for
 * the Config API).  Every process that sends (the workers, flushes,
 * m3ter_submit) asks for a send slot here first, so together they stay
 * under both:
 *
 *	- slots are spaced 1 / (rate × 0.96 × scale) seconds apart (a little
 *	  headroom: requests arrive with jitter, and m3ter counts arrivals),
 *	  and never more than that many fall in any second: not a wall-clock
 *	  second only, but any trailing second of the cluster's own send times
 *	  (m3ter does not say how it counts a second: by the clock, in a
 *	  sliding window, or as a token bucket; this holds under each);
 *	- a slot is only given once the slot that many places back in the
 *	  5-minute budget lies a whole window before it, and half a second more
 *	  (requests reach m3ter with delays that differ): no window of
 *	  m3ter.requests_window, sliding or fixed, holds more than the budget;
 *	- adaptive, in two steps, since one 429 alone says little: arrival
 *	  jitter or a token bucket smaller than the pacer's catch-up allows can
 *	  refuse a single request of a pace under the limit.  The first 429 of
 *	  an overload lowers the pace by 3% and spaces slots evenly for 30 s
 *	  (no slot caught up closer than a whole interval: that costs a few
 *	  percent of the rate, as a late slot is not made up); it closes no time,
 *	  so it costs the refused request alone (which m3ter's rule makes wait
 *	  a second).  Each further lone 429 among admitted requests (the
 *	  cluster's own jitter meeting a token bucket of one or two) lowers it
 *	  3% again, until the jitter fits.  A second 429 within the second that
 *	  follows another 429 straight, comes in the second or so after another
 *	  overload, or comes with more (a fifth of a whole second's answers,
 *	  three at least) shows that something else spends the same budget
 *	  (another server, the
 *	  application itself; a full window refuses every request, a bucket that
 *	  others keep empty refuses here and there, second after second): the
 *	  pace drops to what m3ter admitted from this cluster in the last second
 *	  (a little under it; by half when it has not sent for a whole second
 *	  yet: two servers that start together each take half instead of
 *	  colliding again the next second; by a fifth when another drop came
 *	  within 10 s, so that a small limit is not halved again and again;
 *	  never to less than a quarter at once), and no slot is given
 *	  for the rest of the second in which the refused request reached m3ter
 *	  (taken as the middle of its round trip; m3ter refuses the rest of an
 *	  overloaded second), nor before a Retry-After longer than a second.
 *	  One overload drops it once: 429s for requests sent before that drop
 *	  tell the same; a 429 with a Retry-After longer than a second names
 *	  its own wait, and one for a request sent while the cluster sent at
 *	  less than half its pace (a storm of refusals that are not about the
 *	  rate) says nothing about it.  The pace then climbs back 1% of the
 *	  rate a second (slowly: servers sharing an organization settle near
 *	  their shares instead of overshooting every few seconds), faster the
 *	  longer no 429 came (times the square of the seconds since the last
 *	  one over 5): once the others are gone, the whole rate is back within
 *	  15-20 s.  A blind halving that is no repeat (none within 10 s
 *	  before it) climbs back in about a second instead, from when sends
 *	  resume: a brief intrusion early in a burst costs about a second.
 *	  Another server shows at once, as a 429 during that climb: the pace
 *	  goes back to the halved one and climbs slowly.
 *
 * The usage query (reconciliation) goes to m3ter's Data Explorer, limited
 * to one request a second: it is paced apart, at that rate.
 *
 * With the library preloaded the state lives in shared memory under one
 * spinlock (held for a few dozen instructions); otherwise each process
 * paces itself.  Slots are handed out without sleeping, so a process with
 * requests in flight can keep serving their answers while it waits.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>
#include <unistd.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/array.h"
#include "utils/timestamp.h"

#include "client/pacing.h"
#include "ground/errors.h"
#include "ground/settings.h"
#include "ground/shmem.h"

#define MIN_SCALE 0.05
#define FIRST_SHARE_DOWN 0.5	/* a share drop with no whole second to go by: half, */
#define SCALE_DOWN 0.8			/* or a fifth within REPEAT_SHARE_US of the last one */
#define REPEAT_SHARE_US (10 * USECS_PER_SEC)
#define SHARE_FLOOR 0.25		/* a share drop keeps a quarter of the pace at least */
#define NEAR_LIMIT_DOWN 0.97	/* the first 429 of an overload */
#define OVERLOAD_US 1000000		/* 429s this close together are one overload */
#define SHARED_REFUSED 0.2		/* refused answers in a second that show others, */
#define RECURRING_US (2 * USECS_PER_SEC)	/* as do overloads this close */
#define EVEN_HOLD_US (30 * USECS_PER_SEC)	/* slots stay evenly spaced this long */
#define BACKOFF_FIRST_US (3 * USECS_PER_SEC)	/* 429s that go on: 3 s, then 9, 27, ... */
#define RECOVER_PER_S 0.01		/* the scale climbs back 1% of the rate a second, */
#define RECOVER_FASTER_S 5		/* and faster after 5 s without a 429 (by the square); */
#define RECOVER_BLIND_PER_S 0.5	/* after a blind first halving, half the rate a second */
/* a slot asked for this late (µs) is still given on schedule */
#define CATCH_UP_US 10000
/* slots a little under the limit: answers arrive with jitter, and m3ter counts arrivals */
#define HEADROOM 0.96
/* the send times kept: the 5-minute budget (and a per-second cap) is cut to it */
#define KEPT_SLOTS 20000
/* a budget's window is kept this much (µs) longer: arrival delays differ */
#define WINDOW_MARGIN_US 500000
/* where a shutdown leaves the last window's send times, as PostgreSQL its statistics */
#define SLOTS_FILE "pg_stat/m3ter_pacing.stat"
#define SLOTS_FILE_MAGIC 0x6d337032

typedef struct PaceState
{
	TimestampTz next_slot;		/* earliest time for the next slot */
	TimestampTz blocked_until;	/* after a 429: no slot before this */
	double		scale;			/* adaptive share of the per-second rate */
	TimestampTz raised_at;		/* when the scale last changed */
	TimestampTz dropped_at;		/* when a 429 last lowered it */
	TimestampTz overload_at;	/* the first 429 of the overload under way (0: none) */
	TimestampTz prev_overload_at;	/* the first 429 of the one before (0: none) */
	TimestampTz shared_at;		/* when 429s last showed others spend the budget */
	bool		climb_fast;		/* that drop was a blind halving: climb back fast */
	double		climb_from;		/* the dropped scale a fast climb started from */
	TimestampTz even_until;		/* no slot caught up closer than an interval before */
	TimestampTz busy_since;		/* when slots began to be given after a pause */
	int64		answers_second[2];	/* answers counted in this second and the last: */
	int			admitted_count[2];	/* 2xx */
	int			refused_count[2];	/* 429 */
	bool		last_refused;	/* the last answer was a 429 */
	TimestampTz throttled_since;	/* the first 429 since the last 2xx (0: none) */
	TimestampTz last_throttled;	/* the last 429 counted there */
	int64		backoff_us;		/* the growing wait while 429s go on (0: none) */
	TimestampTz backoff_until;	/* the end of that wait */
	TimestampTz backoff_sent_at;	/* when the 429 that began it was sent */
	TimestampTz given[KEPT_SLOTS];	/* when the last slots were given, a ring */
	int			given_next;		/* where the next slot given is written */
} PaceState;

typedef struct PaceShared
{
	slock_t		mutex;
	PaceState	api[M3TER_NUM_APIS];
} PaceShared;

static PaceShared *pace_shared = NULL;
static PaceState local_state[M3TER_NUM_APIS];
static bool local_ready = false;

static TimestampTz given_back(PaceState *st, int n);

/*
 * The budget across a restart.  m3ter counts its 5-minute window whatever
 * the cluster does; a restart (an upgrade of the library needs one) that
 * forgot the requests of the last window spent the budget again, into 429s
 * that held delivery and failed m3ter_submit() for minutes.  So the
 * postmaster writes the send times of the last m3ter.requests_window when
 * it shuts down (in any mode), and reads them back (once) when it starts;
 * with them the end of a wait m3ter asked for (a Retry-After, the growing
 * wait of 429s that go on), which a restart would otherwise cut short.
 * A crash restart (a backend died) finds no file and starts afresh.
 */
static void
save_slots(int code, Datum arg)
{
	const char *tmp = SLOTS_FILE ".tmp";
	TimestampTz since;
	TimestampTz *times;
	FILE	   *f;
	int			api;
	uint32		header[2] = {SLOTS_FILE_MAGIC, M3TER_NUM_APIS};

	if (code != 0 || pace_shared == NULL)
		return;
	since = GetCurrentTimestamp() - (int64) m3ter_requests_window_s * USECS_PER_SEC - WINDOW_MARGIN_US;
	times = palloc(KEPT_SLOTS * sizeof(TimestampTz));
	f = AllocateFile(tmp, PG_BINARY_W);
	if (f == NULL || fwrite(header, sizeof(header), 1, f) != 1)
		goto error;
	for (api = 0; api < M3TER_NUM_APIS; api++)
	{
		PaceState  *st = &pace_shared->api[api];
		int32		n = 0;
		int			i;
		TimestampTz holds[2] = {st->blocked_until, st->backoff_until};

		for (i = KEPT_SLOTS; i > 0; i--)
		{
			TimestampTz t = given_back(st, i);

			if (t > since)
				times[n++] = t;
		}
		if (fwrite(&n, sizeof(n), 1, f) != 1 || (n > 0 && fwrite(times, sizeof(TimestampTz), n, f) != (size_t) n) ||
			fwrite(holds, sizeof(holds), 1, f) != 1)
			goto error;
	}
	if (FreeFile(f) != 0)
	{
		f = NULL;
		goto error;
	}
	(void) durable_rename(tmp, SLOTS_FILE, LOG);
	return;

error:
	ereport(LOG,
			(errcode_for_file_access(),
			 errmsg("m3ter could not write file \"%s\": %m", tmp)));
	if (f != NULL)
		FreeFile(f);
	unlink(tmp);
}

/* Read back what the last shutdown saved, and remove the file */
static void
load_slots(PaceShared *ps)
{
	FILE	   *f = AllocateFile(SLOTS_FILE, PG_BINARY_R);
	uint32		header[2];
	int			api;

	if (f == NULL)
	{
		if (errno != ENOENT)
			ereport(LOG,
					(errcode_for_file_access(),
					 errmsg("m3ter could not read file \"%s\": %m", SLOTS_FILE)));
		return;
	}
	if (fread(header, sizeof(header), 1, f) == 1 && header[0] == SLOTS_FILE_MAGIC &&
		header[1] == M3TER_NUM_APIS)
	{
		for (api = 0; api < M3TER_NUM_APIS; api++)
		{
			PaceState  *st = &ps->api[api];
			int32		n;
			TimestampTz holds[2];

			if (fread(&n, sizeof(n), 1, f) != 1 || n < 0 || n > KEPT_SLOTS ||
				(n > 0 && fread(st->given, sizeof(TimestampTz), n, f) != (size_t) n) ||
				fread(holds, sizeof(holds), 1, f) != 1)
			{
				memset(st->given, 0, sizeof(st->given));
				break;
			}
			st->given_next = n % KEPT_SLOTS;
			st->blocked_until = holds[0];
			st->backoff_until = holds[1];
		}
	}
	FreeFile(f);
	unlink(SLOTS_FILE);
}

/* Set up the shared state once, when it is created (in the postmaster) */
static void
pacing_shmem_init(void *shared)
{
	PaceShared *ps = shared;
	int			i;

	SpinLockInit(&ps->mutex);
	for (i = 0; i < M3TER_NUM_APIS; i++)
		ps->api[i].scale = 1.0;
	if (!IsUnderPostmaster)
	{
		load_slots(ps);
		on_shmem_exit(save_slots, (Datum) 0);
	}
}

/*
 * No hold outlasts m3ter.retry_max_delay from now: a lower setting (a
 * reload) shortens a hold under way at the next look
 */
static void
clamp_holds(PaceState *st, TimestampTz now)
{
	TimestampTz latest = now + (int64) m3ter_retry_max_delay_ms * 1000;

	if (st->blocked_until > latest)
		st->blocked_until = latest;
	if (st->backoff_until > latest)
		st->backoff_until = latest;
}

/* Share the pacing state across the cluster (while preloading) */
void
m3ter_pacing_shmem_install(void)
{
	m3ter_shmem_register("m3ter pacing", sizeof(PaceShared), (void **) &pace_shared,
						 pacing_shmem_init);
}

/* Sleep ms milliseconds, staying responsive to cancel and shutdown */
void
m3ter_sleep_ms(int ms)
{
	TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);

	for (;;)
	{
		long		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), until);

		CHECK_FOR_INTERRUPTS();
		if (left <= 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 left, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* The state of an API, locked when shared; m3ter_pacing_unlock() releases */
static PaceState *
lock_state(M3terApi api)
{
	if (pace_shared != NULL)
	{
		SpinLockAcquire(&pace_shared->mutex);
		return &pace_shared->api[api];
	}
	if (!local_ready)
	{
		int			i;

		for (i = 0; i < M3TER_NUM_APIS; i++)
			local_state[i].scale = 1.0;
		local_ready = true;
	}
	return &local_state[api];
}

static void
unlock_state(void)
{
	if (pace_shared != NULL)
		SpinLockRelease(&pace_shared->mutex);
}

/*
 * The per-second rate and the 5-minute budget of an API (0: no limit); the
 * usage query has the Data Explorer's own limit, one a second, and is off
 * with the others
 */
static void
limits(M3terApi api, int *per_second, int *per_window)
{
	if (api == M3TER_EXPLORER_API)
	{
		*per_second = m3ter_max_requests_per_second > 0 ? M3TER_EXPLORER_PER_SECOND : 0;
		*per_window = 0;
		return;
	}
	*per_second = Min(m3ter_max_requests_per_second, KEPT_SLOTS);
	*per_window = api == M3TER_INGEST_API ? m3ter_max_requests_per_5min :
		m3ter_max_requests_per_5min * 4;
	*per_window = Min(*per_window, KEPT_SLOTS);
}

/* When the slot n places back was given (0: none was) */
static TimestampTz
given_back(PaceState *st, int n)
{
	return st->given[(st->given_next + KEPT_SLOTS - n) % KEPT_SLOTS];
}

/*
 * The scale as the climb back has taken it by now: 1% of the rate a second
 * since it last changed, idle time included, faster by the square of the
 * quiet seconds (since the last drop) over RECOVER_FASTER_S.  A 2xx answer
 * keeps it; slots and m3ter.pacing_pace() read it, so an idle cluster is
 * back at its pace before its first request.
 */
static double
climbed_scale(PaceState *st, TimestampTz now)
{
	double		seconds;
	double		faster;

	if (st->scale >= 1.0)
		return st->scale;
	seconds = (double) (now - st->raised_at) / USECS_PER_SEC;
	if (st->climb_fast)
		return Min(1.0, st->scale + RECOVER_BLIND_PER_S * Max(seconds, 0.0));
	faster = Max(1.0, (double) (now - st->dropped_at) / USECS_PER_SEC / RECOVER_FASTER_S);
	return Min(1.0, st->scale + RECOVER_PER_S * Max(seconds, 0.0) * faster * faster);
}

/*
 * Ask for a send slot no later than now + horizon_ms.  Returns true and
 * takes it, or false with *wait_ms set to how long until one may be had.
 */
bool
m3ter_pace_try(M3terApi api, int horizon_ms, int *wait_ms)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz slot;
	PaceState  *st;
	int			per_second;
	int			per_window;
	double		rate;			/* slots a second, headroom and scale applied */
	int64		interval;
	bool		ok = true;

	limits(api, &per_second, &per_window);
	*wait_ms = 0;
	if (per_second <= 0 && per_window <= 0)
		return true;

	st = lock_state(api);
	clamp_holds(st, now);
	rate = per_second * HEADROOM * climbed_scale(st, now);
	interval = per_second > 0 ? (int64) (USECS_PER_SEC / rate) : 0;

	/*
	 * A sender that asks a little late (it was writing outcomes or claiming
	 * rows) keeps the schedule: a slot missed by at most half an interval,
	 * and 10 ms, is given now and the next one stays where it was, so the
	 * rate holds at any latency and no two requests go closer than half an
	 * interval.  After a longer pause the schedule starts again from now.
	 * Once a 429 came, slots keep a whole interval apart (even_until).
	 */
	if (st->next_slot < now - USECS_PER_SEC)
		st->busy_since = now;
	if (now < st->even_until)
		slot = Max(st->next_slot, now);
	else
		slot = st->next_slot >= now - Min(interval / 2, CATCH_UP_US) ? st->next_slot : now;
	slot = Max(slot, st->blocked_until);
	if (per_second > 0)
	{
		/*
		 * Never more than the limit (with the headroom) in any second: the
		 * slot cap places back must lie a whole second (and a millisecond
		 * for rounding) before this one.  Slots are given in time order,
		 * so this bounds every trailing second, wall-clock seconds too.
		 */
		TimestampTz earlier = given_back(st, Max((int) rate, 1));

		if (earlier != 0)
			slot = Max(slot, earlier + USECS_PER_SEC + 1000);
	}
	if (per_window > 0)
	{
		/* the same for the budget: once its oldest slot has left the window */
		TimestampTz earlier = given_back(st, per_window);

		if (earlier != 0)
			slot = Max(slot, earlier + (int64) m3ter_requests_window_s * USECS_PER_SEC + WINDOW_MARGIN_US);
	}
	if (slot > now + (int64) horizon_ms * 1000)
	{
		ok = false;
		*wait_ms = (int) Min((slot - now + 999) / 1000, (int64) INT_MAX);
	}
	else
	{
		if (per_second > 0)
			st->next_slot = slot + interval;
		st->given[st->given_next] = Max(slot, now);	/* when it is given */
		st->given_next = (st->given_next + 1) % KEPT_SLOTS;
	}
	unlock_state();
	return ok;
}

/*
 * Until when no slot is given at all (a Retry-After's hold, or the growing
 * wait while 429s go on: *backing_off); 0 if none
 */
TimestampTz
m3ter_pace_held_until(M3terApi api, bool *backing_off)
{
	PaceState  *st = lock_state(api);
	TimestampTz until;

	clamp_holds(st, GetCurrentTimestamp());
	until = st->blocked_until;
	*backing_off = st->backoff_until >= until;
	unlock_state();
	return until > GetCurrentTimestamp() ? until : 0;
}

/*
 * When the 5-minute budget lets the slot ahead places after the next be
 * given (0: at once, or no budget).  A sender claims no rows for a slot the
 * budget holds: rows claimed would sit in flight, unsent, for up to the
 * window, and a sender stopped meanwhile would count them as sent.
 */
TimestampTz
m3ter_pace_budget_at(M3terApi api, int ahead)
{
	int			per_second;
	int			per_window;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz earlier;
	TimestampTz until = 0;

	limits(api, &per_second, &per_window);
	if (per_window <= 0)
		return 0;
	if (ahead >= per_window)
		return now + (int64) m3ter_requests_window_s * USECS_PER_SEC;
	earlier = given_back(lock_state(api), per_window - ahead);
	unlock_state();
	if (earlier != 0)
		until = earlier + (int64) m3ter_requests_window_s * USECS_PER_SEC + WINDOW_MARGIN_US;
	return until > now ? until : 0;
}

/* until, when it is beyond the hold horizon; else 0 */
TimestampTz
m3ter_beyond_hold_horizon(TimestampTz until)
{
	return until > TimestampTzPlusMilliseconds(GetCurrentTimestamp(), M3TER_HOLD_HORIZON_MS) ? until : 0;
}

/*
 * Until when the 5-minute budget holds the next request, when that is
 * beyond the hold horizon; 0 if it does not (due rows then wait unclaimed)
 */
TimestampTz
m3ter_pace_budget_holds(M3terApi api)
{
	return m3ter_beyond_hold_horizon(m3ter_pace_budget_at(api, 0));
}

/*
 * Until when a wait m3ter asked for (a Retry-After, or the growing wait
 * while 429s go on: *backing_off) holds the next request, when that is
 * beyond the hold horizon; 0 if it does not
 */
TimestampTz
m3ter_pace_wait_holds(M3terApi api, bool *backing_off)
{
	return m3ter_beyond_hold_horizon(m3ter_pace_held_until(api, backing_off));
}

/*
 * 429s that go on (m3ter's rule: wait 1 s, then 3 s, growing).  A 429 for a
 * request sent a whole second after the first 429 with no 2xx since, and
 * after the last such wait ended, shows a limit that lasts (a 5-minute
 * budget spent by others, a window that counts refused requests too):
 * nothing is sent for 3 s, then 9, 27, ... (m3ter.retry_max_delay at most).
 * An overload of one second never gets here: its next second admits some.
 */
static void
back_off(PaceState *st, TimestampTz sent_at, TimestampTz now)
{
	/* 2 s with no 429 (out of the last wait) end a throttle, 2xx or not (a 400 since, say) */
	TimestampTz quiet_since = Max(st->last_throttled, st->backoff_until);

	st->last_throttled = now;
	if (st->throttled_since == 0 || now - quiet_since > 2 * USECS_PER_SEC)
	{
		st->throttled_since = now;
		st->backoff_us = 0;
		return;
	}
	if (sent_at - st->throttled_since < USECS_PER_SEC || sent_at < st->backoff_until)
		return;
	st->backoff_us = Min(st->backoff_us == 0 ? BACKOFF_FIRST_US : st->backoff_us * 3,
						 (int64) m3ter_retry_max_delay_ms * 1000);
	st->backoff_until = now + st->backoff_us;
	st->backoff_sent_at = sent_at;
	st->blocked_until = Max(st->blocked_until, st->backoff_until);
}

/* Wait for a send slot, staying responsive to cancel and shutdown */
void
m3ter_pace(M3terApi api)
{
	int			wait_ms;

	while (!m3ter_pace_try(api, 0, &wait_ms))
		m3ter_sleep_ms(wait_ms);
}

/*
 * Answers of one kind (counts: admitted_count or refused_count) in about
 * the last second, at now
 */
static double
answers_last_second(PaceState *st, const int *counts, TimestampTz now)
{
	int64		sec = now / USECS_PER_SEC;
	double		into = (double) (now % USECS_PER_SEC) / USECS_PER_SEC;
	double		n = 0;
	int			i;

	for (i = 0; i < 2; i++)
	{
		if (st->answers_second[i] == sec)
			n += counts[i];
		else if (st->answers_second[i] == sec - 1)
			n += counts[i] * (1.0 - into);
	}
	return n;
}

/* Count an answer (a 2xx, or a 429 if refused) in its second */
static void
count_answer(PaceState *st, TimestampTz now, bool refused)
{
	int64		sec = now / USECS_PER_SEC;
	int			b = (int) (sec % 2);

	if (st->answers_second[b] != sec)
	{
		st->answers_second[b] = sec;
		st->admitted_count[b] = 0;
		st->refused_count[b] = 0;
	}
	if (refused)
		st->refused_count[b]++;
	else
		st->admitted_count[b]++;
	st->last_refused = refused;
}

/* Slots given after from and up to t (the ring is in time order) */
static int
given_between(PaceState *st, TimestampTz from, TimestampTz t)
{
	int			n = 0;
	int			back;

	for (back = 1; back <= KEPT_SLOTS; back++)
	{
		TimestampTz g = given_back(st, back);

		if (g == 0 || g <= from)
			break;
		if (g <= t)
			n++;
	}
	return n;
}

/*
 * Did the cluster send at less than half its pace in the second before
 * sent_at (counting only since it began sending, and since a block ended)?
 */
static bool
sent_far_under_pace(PaceState *st, int per_second, TimestampTz sent_at)
{
	TimestampTz from = Max(sent_at - USECS_PER_SEC, st->busy_since);

	if (st->blocked_until <= sent_at)
		from = Max(from, st->blocked_until);
	return given_between(st, from, sent_at) <
		per_second * HEADROOM * st->scale * (sent_at - from) / USECS_PER_SEC / 2;
}

/*
 * Does a 429 within an overload (after_refusal: the answer before it was
 * one too) show that others spend the budget?  Yes when refusals come in a
 * row (a window that is full refuses every request), when this overload
 * follows the one before within RECURRING_US (a bucket that others keep
 * empty refuses one request here and there, second after second, never two
 * in a row), or when they make a good part of a whole second's answers (a
 * bucket that others empty).  A second of lone 429s among 2xx is this
 * cluster's own bunching or jitter meeting a small bucket.
 */
static bool
others_spend(PaceState *st, bool after_refusal, TimestampTz sent_at, TimestampTz now)
{
	double		refused = answers_last_second(st, st->refused_count, now);
	double		admitted = answers_last_second(st, st->admitted_count, now);

	return after_refusal ||
		(st->prev_overload_at != 0 && st->overload_at - st->prev_overload_at <= RECURRING_US) ||
		(sent_at - st->busy_since >= USECS_PER_SEC &&
		 refused >= 3 && refused >= SHARED_REFUSED * (refused + admitted));
}

/*
 * A 429 that speaks of the pace: one that shows others spend the budget
 * drops it to our share; any other (the first of an overload, or a lone one
 * after it) slows it a little
 */
static void
slow_down(PaceState *st, int per_second, bool after_refusal, TimestampTz sent_at, TimestampTz now)
{
	/* the rest of the second in which the refused request reached m3ter */
	TimestampTz reached = sent_at + (now - sent_at) / 2;
	TimestampTz second_ends = (reached / USECS_PER_SEC + 1) * USECS_PER_SEC;

	if (st->climb_fast && st->scale < 1.0)
	{
		/*
		 * A 429 during a fast climb: the dropped pace was nearer what m3ter
		 * admits (another server's share).  Back to it, once for this
		 * overload (429s for requests sent before now tell the same), and
		 * the slow climb from there.
		 */
		st->climb_fast = false;
		st->scale = Min(st->scale, st->climb_from);
		st->dropped_at = st->shared_at = now;
		st->overload_at = 0;
		st->blocked_until = Max(st->blocked_until, second_ends);
		return;
	}
	st->climb_fast = false;
	if (st->overload_at == 0 || now - st->overload_at > OVERLOAD_US)
	{
		/* the first: perhaps only jitter or bunching; slots evenly spaced from now */
		st->prev_overload_at = st->overload_at;
		st->overload_at = now;
		st->even_until = now + EVEN_HOLD_US;
	}
	else if (others_spend(st, after_refusal, sent_at, now))
	{
		/* others spend the budget too: keep to what m3ter admitted from us */
		double		scale = st->scale * (now - st->shared_at < REPEAT_SHARE_US ? SCALE_DOWN : FIRST_SHARE_DOWN);
		double		admitted = answers_last_second(st, st->admitted_count, now);

		/*
		 * What m3ter admitted in the last second is our part only after a
		 * whole second of sending (early in a burst it is only what was sent
		 * so far); and a pause in that second (a block, retries waiting)
		 * makes it less than our part: never below a quarter at once
		 */
		bool		measured = per_second > 0 && admitted >= 1.0 && sent_at - st->busy_since >= USECS_PER_SEC;

		/*
		 * A blind halving (no whole second sent yet) that is not a repeat
		 * may be a brief intrusion as well as another server starting: the
		 * pace climbs back within about a second, from when sends resume.
		 * Another server's share shows at once, as a 429 during that climb.
		 * (A measured drop climbs slowly: after it, a fast climb made two
		 * clusters that had settled collide again and again.)
		 */
		st->climb_fast = !measured && now - st->shared_at >= REPEAT_SHARE_US;
		if (measured)
			scale = Min(st->scale, admitted * HEADROOM / per_second);
		st->scale = Max(MIN_SCALE, Max(scale, st->scale * SHARE_FLOOR));
		st->climb_from = st->scale;
		st->dropped_at = st->shared_at = now;
		st->overload_at = 0;
		st->blocked_until = Max(st->blocked_until, second_ends);
		st->raised_at = st->climb_fast ? st->blocked_until : now;
		return;
	}
	/* the first, or a lone one after it (jitter still meeting a small bucket): a little slower */
	st->scale = Max(MIN_SCALE, st->scale * NEAR_LIMIT_DOWN);
	st->dropped_at = now;
}

/*
 * Tell the pacer how a request sent at sent_at went: 429s slow everyone
 * down, 2xx are counted and recover the pace.
 */
void
m3ter_pace_feedback(M3terApi api, long status, int retry_after_ms, TimestampTz sent_at)
{
	PaceState  *st;
	TimestampTz now;
	int			per_second;
	int			per_window;

	if (status != 429 && (status < 200 || status >= 300))
		return;
	limits(api, &per_second, &per_window);
	now = GetCurrentTimestamp();
	st = lock_state(api);
	if (status == 429)
	{
		bool		after_refusal = st->last_refused;

		/* the climb so far is kept, whether this 429 lowers the pace or not */
		st->scale = climbed_scale(st, now);
		/* (the refused rows wait a second at least; the cluster at most m3ter.retry_max_delay) */
		if (retry_after_ms > 1000)
			st->blocked_until = Max(st->blocked_until,
									now + (int64) Min(retry_after_ms, m3ter_retry_max_delay_ms) * 1000);
		else
			back_off(st, sent_at, now);

		/*
		 * 429s for requests sent before the drop for this overload (they tell
		 * the same), naming a wait of their own, or sent far under the pace
		 * (a storm of refusals not about the rate) say nothing of the pace;
		 * they are not counted either, or a later lone 429 would look like
		 * one of many, or one in a row
		 */
		if (sent_at >= st->shared_at && retry_after_ms <= 1000 &&
			!(per_second > 0 && sent_far_under_pace(st, per_second, sent_at)))
		{
			count_answer(st, now, true);
			slow_down(st, per_second, after_refusal, sent_at, now);
		}
		/* (a fast climb starts when sends resume: raised_at may lie ahead) */
		st->raised_at = Max(now, st->raised_at);
	}
	else
	{
		count_answer(st, now, false);
		st->throttled_since = 0;
		st->backoff_us = 0;
		if (st->backoff_until > now && sent_at > st->backoff_sent_at)
		{
			/* admitted, sent after the 429 that began the wait: m3ter admits again */
			if (st->blocked_until == st->backoff_until)
				st->blocked_until = now;
			st->backoff_until = now;
		}
		if (st->scale < 1.0)
		{
			st->scale = climbed_scale(st, now);
			st->raised_at = Max(now, st->raised_at);
		}
		if (st->scale >= 1.0)
			st->climb_fast = false;	/* the climb is over */
	}
	unlock_state();
}

PG_FUNCTION_INFO_V1(m3ter_pacing_slots);

/*
 * m3ter.pacing_slots() RETURNS timestamptz[]
 *
 * When the pacer gave its last send slots for the Ingest API, oldest first
 * (up to KEPT_SLOTS; this process's own without the preload): what a test
 * checks the limits against.
 */
Datum
m3ter_pacing_slots(PG_FUNCTION_ARGS)
{
	Datum	   *slots = palloc(KEPT_SLOTS * sizeof(Datum));	/* not under the spinlock */
	int			n = 0;
	int			i;
	PaceState  *st = lock_state(M3TER_INGEST_API);

	for (i = KEPT_SLOTS; i > 0; i--)
	{
		TimestampTz t = given_back(st, i);

		if (t != 0)
			slots[n++] = TimestampTzGetDatum(t);
	}
	unlock_state();
	PG_RETURN_ARRAYTYPE_P(construct_array(slots, n, TIMESTAMPTZOID, sizeof(TimestampTz), true, TYPALIGN_DOUBLE));
}

PG_FUNCTION_INFO_V1(m3ter_pacing_pace);

/*
 * m3ter.pacing_pace() RETURNS float8
 *
 * The Ingest API requests a second the pacer gives now: the limit with its
 * headroom, lowered after 429s (0: no limit).  The cluster's when preloaded.
 */
Datum
m3ter_pacing_pace(PG_FUNCTION_ARGS)
{
	int			per_second;
	int			per_window;
	double		scale;
	PaceState  *st;

	limits(M3TER_INGEST_API, &per_second, &per_window);
	st = lock_state(M3TER_INGEST_API);
	scale = climbed_scale(st, GetCurrentTimestamp());
	unlock_state();
	PG_RETURN_FLOAT8(per_second * HEADROOM * scale);
}
