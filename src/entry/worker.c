/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The background worker that delivers m3ter.outbox continuously.
 *
 * Started by the launcher (launcher.c) in each database that has the
 * extension, with the database's OID as main_arg, it connects there and
 * loops as worker_spi does: wait on its latch, reload settings on SIGHUP,
 * then deliver (delivery.c) until nothing is in flight and nothing more
 * is due.  While requests are in flight it does not sleep on its latch
 * but waits on their sockets in slices of 10 ms, checking the latch and
 * interrupts between them.
 *
 * When to wake:
 *	- at once when a transaction that inserted into m3ter.outbox commits
 *	  (the outbox CHECK marks the transaction, its commit sets our latch).
 *	  The latch is published only between deliveries, before the upkeep
 *	  looks for due rows: a delivery keeps claiming until nothing is due,
 *	  so a commit during one costs no signal and no wake-up of ours;
 *	- at the earliest next_attempt_at of a row waiting for a retry;
 *	- otherwise after m3ter.worker_naptime, doubling while idle up to
 *	  m3ter.worker_idle_naptime.
 * Between deliveries it deletes accepted rows older than m3ter.retention
 * (at most once a minute, or once per retention if shorter, walking the
 * table by id), and every 10 s sweeps behind the claims' frontier for
 * pending rows nothing would send (m3ter_outbox_sweep, which every claim
 * also runs when it is due, so that flushes sweep without the worker).
 *
 * An error is logged, its transaction rolled back (the rows stay pending)
 * and the worker goes on; when the error came from reading a claim,
 * delivery narrows down to the row that raised and marks it failed
 * (delivery.c), so one bad row never stalls the outbox.  If the worker
 * dies anyway, the launcher restarts it after a second.  It ends (exit
 * code 0, not restarted) when the extension is not installed in its
 * database or is dropped (m3ter_worker_attach/listen, slots.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "client/pacing.h"
#include "client/token.h"
#include "ground/errors.h"
#include "ground/settings.h"
#include "ground/subscriber.h"
#include "ground/version.h"
#include "outbox/claim_state.h"
#include "outbox/delivery.h"
#include "entry/periodic.h"
#include "outbox/outbox.h"
#include "outbox/slots.h"

PGDLLEXPORT void m3ter_worker_main(Datum main_arg);

/* The subscription that fills this database's outbox ("" when none) */
static char subscribed_to[NAMEDATALEN];

/* The extension in this database against the library (not OK: rows wait) */
static M3terVersionState version_state;

/* Does this state stop delivery (an update or a restart fixes it)? */
#define version_stops(state) ((state) == M3TER_VERSION_OLDER || (state) == M3TER_VERSION_NEWER)

/*
 * Log an error once, not on every pass while it persists; sqlstate is the
 * cause's, the same a call or a flush raises for it.  True when it logged.
 */
static bool
log_once(const char *message, int sqlstate, const char *hint, char **last_logged)
{
	if (*last_logged != NULL && strcmp(*last_logged, message) == 0)
		return false;
	ereport(WARNING,
			(errcode(sqlstate),
			 errmsg("m3ter outbox delivery stopped: %s", message),
			 errhint("%s", hint)));
	if (*last_logged != NULL)
		pfree(*last_logged);
	*last_logged = MemoryContextStrdup(TopMemoryContext, message);
	return true;
}

/* Add what the delivery did since the last report to the shared figures */
static void
report(const M3terFlushStats *now, M3terFlushStats *reported)
{
	M3terFlushStats delta;

	delta.claimed = now->claimed - reported->claimed;
	delta.accepted = now->accepted - reported->accepted;
	delta.failed = now->failed - reported->failed;
	delta.retried = now->retried - reported->retried;
	delta.requests = now->requests - reported->requests;
	delta.sent = now->sent - reported->sent;
	delta.resent = now->resent - reported->resent;
	delta.throttled = now->throttled - reported->throttled;
	delta.orphaned = now->orphaned - reported->orphaned;
	delta.stopped = now->stopped;
	delta.error = now->error != reported->error ? now->error : NULL;
	m3ter_note_delivery(&delta);
	*reported = *now;
}

/* How often a long delivery makes room for the upkeep (ms) */
#define UPKEEP_INTERVAL_MS 10000

/*
 * Between deliveries, in one transaction: is the extension there, delete
 * expired rows, sweep behind the frontier, poll Events, and when is the
 * next row due.  Also every UPKEEP_INTERVAL_MS of a long delivery (one
 * that keeps finding rows never ends), then without the due time and
 * leaving the delivery's own in-flight records alone.  Returns false when
 * the extension is not installed.
 */
static bool
upkeep(TimestampTz *next_due, TimestampTz *last_retention, TimestampTz *last_sweep, char **last_logged,
	   bool delivering)
{
	bool		installed;
	bool		version_stopped;
	char	   *why = NULL;
	char	   *subscription = NULL;
	TimestampTz now = GetCurrentTimestamp();

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "m3ter: outbox upkeep");

	installed = m3ter_lock_extension();	/* also: is it installed? */
	*next_due = 0;
	version_stopped = version_stops(version_state);	/* the last pass's */
	version_state = installed ? m3ter_installed_version_state(&why) : M3TER_VERSION_ABSENT;
	if (version_stopped && !version_stops(version_state))
	{
		/* updated, restarted or dropped: that stop is over (m3ter refused nothing) */
		if (*last_logged != NULL)
			pfree(*last_logged);
		*last_logged = NULL;
	}
	if (installed && version_state != M3TER_VERSION_OK)
	{
		/* ALTER EXTENSION m3ter UPDATE (older SQL) or a restart (older library) fixes it */
		if (log_once(why, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
					 "The rows stay pending; delivery resumes by itself once the versions match.", last_logged))
		{
			/* this database's last_error too, as a delivery's own error is */
			M3terFlushStats none = {0};

			none.error = why;
			m3ter_note_delivery(&none);
		}
		installed = false;
	}
	else if (installed && !delivering && (subscription = m3ter_outbox_subscription()) != NULL)
	{
		/* a subscription fills the outbox: its publisher delivers (subscriber.c) */
		if (strcmp(subscription, subscribed_to) != 0)
			ereport(LOG,
					(errmsg("m3ter delivery paused: m3ter.outbox is a table of subscription \"%s\"", subscription),
					 errdetail("The publisher delivers these rows; delivery here starts when the subscription is disabled or dropped.")));
		strlcpy(subscribed_to, subscription, sizeof(subscribed_to));
	}
	else if (installed)
	{
		if (subscribed_to[0] != '\0' && !delivering)
		{
			ereport(LOG,
					(errmsg("m3ter delivery resumed: m3ter.outbox is no longer a table of subscription \"%s\"",
							subscribed_to)));
			subscribed_to[0] = '\0';
		}
		/* nothing of ours is in flight now: records left by an error are stale */
		if (!delivering)
			(void) m3ter_outbox_clean_inflight(NULL, 0);
		if (m3ter_retention_s >= 0 &&
			TimestampDifferenceExceeds(*last_retention, now,
									   (int) Min((int64) m3ter_retention_s * 1000, (int64) 60000)))
		{
			while (m3ter_outbox_delete_expired(m3ter_retention_s))
				CHECK_FOR_INTERRUPTS();
			*last_retention = now;
		}
		if (TimestampDifferenceExceeds(*last_sweep, now, M3TER_SWEEP_INTERVAL_S * 1000) && m3ter_outbox_lock_claims())
		{
			M3terClaimState state;

			m3ter_claim_state_read(&state);
			(void) m3ter_outbox_sweep(&state);
			m3ter_claim_state_write(&state);
			*last_sweep = now;
		}
		if (delivering)
			(void) m3ter_periodic_tasks_if_due(true);
		else
		{
			*next_due = m3ter_outbox_next_due();
			if (m3ter_periodic_tasks_if_due(*next_due != 0 && *next_due <= GetCurrentTimestamp()))
				*next_due = m3ter_outbox_next_due();	/* it may have released held rows */
		}
	}

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	return installed;
}

/* How long an idle worker sleeps: doubling while idle, woken for the next due row */
static long
idle_sleep(long *idle_ms, TimestampTz next_due)
{
	long		sleep_ms = *idle_ms;

	*idle_ms = Min(*idle_ms * 2, (long) m3ter_worker_idle_naptime_ms);
	if (next_due != 0)
	{
		long		due_ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), next_due);

		sleep_ms = Min(sleep_ms, Max(due_ms, 10L));
	}
	return sleep_ms;
}

/*
 * The worker's state across passes of its loop (static: it lives across
 * the PG_TRY of a pass)
 */
typedef struct WorkerLoop
{
	bool		active;			/* a delivery is under way */
	bool		busy;			/* it has more to do now: do not sleep */
	long		idle_ms;		/* the idle sleep, doubling */
	long		sleep_ms;		/* the next sleep */
	char	   *last_logged;	/* the stop last logged, until delivery resumes */
	int			probe_rows;		/* after a stop: rows that try whether m3ter takes them (0: all) */
	bool		retrying;		/* the last delivery put rows back for a retry (a fault) */
	M3terDelivery d;
	M3terFlushStats reported;	/* the figures already added to the slot */
	TimestampTz last_retention;
	TimestampTz last_sweep;
	TimestampTz last_upkeep;
	TimestampTz last_report;
	const char *shown;			/* the state shown while delivering */
	TimestampTz token_failure_noted;	/* the token endpoint's failure last noted */
} WorkerLoop;

static WorkerLoop w;

/* (one literal: w.shown compares pointers) */
static const char token_failing_state[] = "waiting: the token endpoint failed (see last_error)";

/* Signals, the database connection and the settings of our own queries */
static void
worker_setup(Datum main_arg)
{
	w.idle_ms = m3ter_worker_naptime_ms;
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	/*
	 * Read the configuration once more before the first pass: a reload the
	 * postmaster signalled while this process was starting (before its
	 * handler was installed) would be lost, and the settings it forked with
	 * are those from before that reload
	 */
	ConfigReloadPending = true;

	BackgroundWorkerInitializeConnectionByOid(DatumGetObjectId(main_arg), InvalidOid, 0);
	/* our own queries only: a database's search_path must not pick what they call */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
	/* short transactions that must not fail to serialize, whatever the database's default */
	SetConfigOption("default_transaction_isolation", "read committed", PGC_SUSET, PGC_S_OVERRIDE);
	/* short queries, run again and again: compiling them would cost more than it saves */
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	m3ter_worker_attach();		/* ends the worker if the extension is not installed */
	m3ter_worker_note("starting", false);
	ereport(LOG, (errmsg("m3ter outbox worker started for database \"%s\"", MyBgworkerEntry->bgw_extra)));
}

/* Sleep unless busy (a latch set by new rows or a signal wakes it), then reload */
static void
wait_for_work(void)
{
	if (!w.busy)
	{
		int			rc = WaitLatch(MyLatch,
								   WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
								   w.sleep_ms, PG_WAIT_EXTENSION);

		ResetLatch(MyLatch);
		if (rc & WL_LATCH_SET)
			w.idle_ms = m3ter_worker_naptime_ms;
	}
	else if (MyLatch->is_set)
		ResetLatch(MyLatch);	/* new rows: the delivery in progress finds them */
	CHECK_FOR_INTERRUPTS();

	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
		w.idle_ms = m3ter_worker_naptime_ms;
		/* the settings may be fixed: after a stop, a whole request tries them (not one row) */
		if (w.probe_rows > 0)
			w.probe_rows = m3ter_batch_rows;
	}
}

/*
 * What m3ter's answers hold the cluster's sends for, when that lasts a
 * second or more yet: 429s that go on (a growing wait), or a Retry-After;
 * NULL if nothing
 */
static const char *
held_by_m3ter(void)
{
	bool		backing_off;

	if (m3ter_pace_wait_holds(M3TER_INGEST_API, &backing_off) == 0)
		return NULL;
	return backing_off ? "waiting: m3ter keeps answering 429 (a growing wait between tries)" :
		"waiting: m3ter asked to wait (Retry-After)";
}

/*
 * Until when the pacer holds the cluster's next request, when that is more
 * than a second away (m3ter's 5-minute budget, a wait m3ter asked for); 0
 * if it does not.  Due rows then wait unclaimed.
 */
static TimestampTz
sends_held(void)
{
	bool		backing_off;

	return Max(m3ter_pace_wait_holds(M3TER_INGEST_API, &backing_off),
			   m3ter_pace_budget_holds(M3TER_INGEST_API));
}

/*
 * Until when the wait for a failed token endpoint holds the next request,
 * when that is beyond the hold horizon; 0 if it does not
 */
static TimestampTz
token_held(void)
{
	return m3ter_beyond_hold_horizon(m3ter_token_wait(0, true));
}

/*
 * The token endpoint's last failure in this database's last_error, once:
 * a worker that waits out a wait another process's failure began (a new
 * worker, another database's) names it too
 */
static void
note_token_failure(void)
{
	char		message[200];
	TimestampTz at = m3ter_token_failure(message, sizeof(message));

	if (at != 0 && at != w.token_failure_noted)
	{
		M3terFlushStats noted;

		memset(&noted, 0, sizeof(noted));
		noted.error = psprintf("the token endpoint failed: %s", message);
		m3ter_note_delivery(&noted);
		pfree(noted.error);
	}
	w.token_failure_noted = at;
}

/* Not delivering: upkeep, then start a delivery if rows are due, or sleep */
static void
start_or_rest(void)
{
	TimestampTz next_due;
	TimestampTz held_until = 0;
	TimestampTz token_wait = 0;

	w.last_upkeep = GetCurrentTimestamp();
	w.busy = false;
	if (!upkeep(&next_due, &w.last_retention, &w.last_sweep, &w.last_logged, false))
	{
		m3ter_worker_note(version_state == M3TER_VERSION_OLDER ? "waiting for ALTER EXTENSION m3ter UPDATE" :
						  version_state == M3TER_VERSION_NEWER ? "waiting for a restart with the newer library" :
						  "waiting for CREATE EXTENSION m3ter", false);
		w.sleep_ms = m3ter_worker_idle_naptime_ms;
	}
	else if (subscribed_to[0] != '\0')
	{
		m3ter_worker_note("paused: the outbox is a subscription's table", false);
		w.sleep_ms = m3ter_worker_idle_naptime_ms;
	}
	else if (next_due == 0 || next_due > GetCurrentTimestamp() || (held_until = sends_held()) != 0 ||
			 (token_wait = token_held()) != 0)
	{
		/* the rows a long Retry-After put back wait for it: say so, not idle */
		const char *held = held_by_m3ter();

		m3ter_worker_note(w.last_logged ? "stopped: m3ter refused the delivery" :
						  held ? held :
						  token_wait != 0 ? token_failing_state :
						  held_until != 0 ? "waiting: the 5-minute request budget is spent (m3ter.max_requests_per_5min)" :
						  w.retrying && next_due != 0 ? "waiting: retrying after a fault (see last_error)" :
						  "idle", true);
		if (token_wait != 0)
			note_token_failure();
		m3ter_worker_listen(true, M3TER_BACKLOG_COUNT);	/* nothing due: count what waits */
		w.sleep_ms = idle_sleep(&w.idle_ms, Max(Max(next_due, held_until), token_wait));
	}
	else
	{
		m3ter_delivery_start(&w.d, M3TER_TXN_WORKER, w.probe_rows);
		memset(&w.reported, 0, sizeof(w.reported));
		w.active = true;
		pgstat_report_activity(STATE_RUNNING, "m3ter: delivering the outbox");
		/* asking a failing token endpoint again (for up to m3ter.request_timeout) is no delivery yet */
		w.shown = m3ter_token_failure(NULL, 0) != 0 ? token_failing_state : "delivering";
		if (w.shown == token_failing_state)
			note_token_failure();	/* (its last_error now, not at the delivery's end) */
		m3ter_worker_note(w.shown, true);
	}
}

/* A delivery ended: log a stop (once) or its end, and choose the next sleep */
static void
end_delivery(void)
{
	bool		stopped = w.d.stats.stopped;
	bool		worked = w.d.stats.claimed > 0;
	bool		retried = w.d.stats.retried_fault > 0;	/* (429s have states of their own) */
	char	   *error = w.d.stats.error ? pstrdup(w.d.stats.error) : NULL;
	int			stop_sqlstate = w.d.stats.stop_sqlstate ? w.d.stats.stop_sqlstate : ERRCODE_M3TER_FORBIDDEN;

	m3ter_delivery_end(&w.d);
	w.active = false;
	w.retrying = retried;
	pgstat_report_activity(STATE_IDLE, NULL);
	if (stopped)
	{
		log_once(error ? error : "refused", stop_sqlstate,
				 "The rows stay pending. Fix the settings and reload (SELECT pg_reload_conf()).", &w.last_logged);
		m3ter_worker_note("stopped: m3ter refused the delivery", true);
		w.sleep_ms = m3ter_worker_idle_naptime_ms;
		w.probe_rows = 1;		/* one row a pass tries whether m3ter takes them again */
		return;
	}
	w.probe_rows = 0;
	if (w.last_logged != NULL)
	{
		ereport(LOG, (errmsg("m3ter outbox delivery resumed")));
		pfree(w.last_logged);
		w.last_logged = NULL;
	}
	m3ter_worker_note("idle", true);
	if (worked)
		w.idle_ms = m3ter_worker_naptime_ms;
	w.sleep_ms = 0;				/* upkeep says how long to sleep */
}

/*
 * The state while delivering: what it waits for when that is not m3ter's
 * next answer (a claim lock, a wait m3ter asked for with Retry-After)
 */
static void
show_delivery_state(void)
{
	const char *state = "delivering";
	const char *held;

	if (w.d.claim_lock_busy)
		state = "waiting: a transaction that called m3ter_flush() holds the claim lock";
	else if ((held = held_by_m3ter()) != NULL)
		state = held;			/* (the same literal each time: w.shown compares pointers) */
	else if (m3ter_token_failure(NULL, 0) != 0 && m3ter_sender_busy(&w.d.sender) == 0)
	{
		state = token_failing_state;	/* no token had since it failed, no row claimed */
		note_token_failure();
	}
	if (state != w.shown)
		m3ter_worker_note(state, false);
	w.shown = state;
}

/* One step of the delivery under way, with upkeep and figures now and then */
static void
deliver_step(void)
{
	if (!m3ter_worker_enabled)
		w.d.max_rows = Max(w.d.stats.claimed, 1);	/* finish what is in flight */
	w.busy = m3ter_delivery_step(&w.d, 10);
	if (w.busy && TimestampDifferenceExceeds(w.last_upkeep, GetCurrentTimestamp(), UPKEEP_INTERVAL_MS))
	{
		TimestampTz unused;

		w.last_upkeep = GetCurrentTimestamp();
		(void) upkeep(&unused, &w.last_retention, &w.last_sweep, &w.last_logged, true);
		pgstat_report_activity(STATE_RUNNING, "m3ter: delivering the outbox");
	}
	show_delivery_state();
	/* every 50 requests, and each second while requests come slowly */
	if (!w.busy || w.d.stats.requests - w.reported.requests >= 50 ||
		TimestampDifferenceExceeds(w.last_report, GetCurrentTimestamp(), 1000))
	{
		report(&w.d.stats, &w.reported);
		w.last_report = GetCurrentTimestamp();
	}
	if (!w.busy)
		end_delivery();
}

/*
 * A pass raised: log it, roll back (the rows stay pending), narrow or fail
 * a claim that raised, and carry on after a pause that suits the error
 */
static void
recover(MemoryContext loop_cxt)
{
	ErrorData  *edata;
	M3terFlushStats failed;
	bool		row_failed;

	MemoryContextSwitchTo(loop_cxt);
	edata = CopyErrorData();
	FlushErrorState();
	ereport(LOG,
			(errmsg("m3ter outbox worker: %s", edata->message),
			 edata->detail ? errdetail("%s", edata->detail) : 0,
			 edata->hint ? errhint("%s", edata->hint) : 0));
	AbortCurrentTransaction();
	if (w.active)
	{
		m3ter_delivery_end(&w.d);
		w.active = false;
	}
	pgstat_report_activity(STATE_IDLE, NULL);
	memset(&failed, 0, sizeof(failed));
	failed.error = edata->message;
	row_failed = m3ter_delivery_claim_failed(M3TER_TXN_WORKER, edata->message);
	if (row_failed)
		failed.failed = 1;
	m3ter_note_delivery(&failed);
	m3ter_worker_note("error; retrying", false);
	/*
	 * a claim that raised goes again at once, narrowed; a missing setting
	 * (m3ter.org_id, a URL) or memory waits for the idle naptime
	 */
	w.sleep_ms = row_failed || (edata->sqlerrcode != ERRCODE_OUT_OF_MEMORY &&
								edata->sqlerrcode != ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE) ? 100 :
		m3ter_worker_idle_naptime_ms;
	w.busy = false;
}

/* Entry point of the worker: wait, then start, step or end a delivery, forever */
void
m3ter_worker_main(Datum main_arg)
{
	MemoryContext loop_cxt;

	worker_setup(main_arg);
	loop_cxt = AllocSetContextCreate(TopMemoryContext, "m3ter worker loop", ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		wait_for_work();
		/* a delivery finds new rows itself: only an idle worker is woken */
		m3ter_worker_listen(m3ter_worker_enabled && !w.active,
							w.active ? M3TER_BACKLOG_ESTIMATE :
							!m3ter_worker_enabled ? M3TER_BACKLOG_COUNT : M3TER_BACKLOG_IF_STALE);
		if (!m3ter_worker_enabled && !w.active)
		{
			m3ter_worker_note("disabled by m3ter.worker_enabled", false);
			w.sleep_ms = m3ter_worker_idle_naptime_ms;
			w.busy = false;
			continue;
		}

		MemoryContextReset(loop_cxt);
		PG_TRY();
		{
			MemoryContext old = MemoryContextSwitchTo(loop_cxt);

			if (!w.active)
				start_or_rest();
			if (w.active)
				deliver_step();
			MemoryContextSwitchTo(old);
		}
		PG_CATCH();
		{
			recover(loop_cxt);
		}
		PG_END_TRY();
	}
}
