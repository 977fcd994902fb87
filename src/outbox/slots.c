/*-------------------------------------------------------------------------
 *
 * slots.c
 *		One slot per database in shared memory (its worker's latch, state
 *		and figures), waking a database's worker when usage rows commit
 *		there, and the worker's attach and notes.  status.c reads the
 *		slots for m3ter_worker_status() and m3ter.databases.
 *
 * The shared struct exists only when m3ter is in shared_preload_libraries;
 * without it there is no worker to wake and no figures are kept.  All
 * fields are protected by the spinlock, held for a few instructions only:
 * nothing that can fail or sleep runs while it is held.
 *
 * Slots are keyed by database OID.  The launcher takes a slot when it
 * starts a database's worker; m3ter_flush() takes one for its figures in a
 * database where no worker runs.  The launcher frees a slot when its
 * database is dropped, or turns out not to have the extension and has no
 * figures.  A worker finds its slot by MyDatabaseId at start.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "outbox/slots.h"
#include "ground/settings.h"
#include "ground/shmem.h"
#include "ground/version.h"
#include "outbox/delivery.h"

M3terShared *m3ter_shared = NULL;


/* set by the outbox CHECK (outbox_check.c) or m3ter.launcher_wake(), acted on at commit */
static bool wake_at_commit = false;
static bool wake_launcher_at_commit = false;
static bool xact_callback_registered = false;

/* the worker's own slot, once attached */
static M3terDbSlot *my_slot = NULL;
static TimestampTz next_backlog_count = 0;
static TimestampTz last_backlog_count = 0;	/* of every pending row */
static TimestampTz backlog_count_floor = 0;	/* no count before: 5% of the time at most */
static bool delivered_since_count = false;	/* a delivery ran since that count */

/* The delivery rate: the accepted count sampled this often (status.c reads it) */
#define RATE_SAMPLE_MS 5000

/* Sample the accepted count of a slot, at most every RATE_SAMPLE_MS (spinlock held) */
static void
sample_accepted(M3terDbSlot *slot, TimestampTz now)
{
	int			last = (slot->rate_next + M3TER_RATE_SAMPLES - 1) % M3TER_RATE_SAMPLES;

	if (slot->rate_at[last] != 0 && now - slot->rate_at[last] < RATE_SAMPLE_MS * (int64) 1000)
		return;
	slot->rate_at[slot->rate_next] = now;
	slot->rate_accepted[slot->rate_next] = slot->accepted;
	slot->rate_next = (slot->rate_next + 1) % M3TER_RATE_SAMPLES;
}

/* How often a worker counts its backlog, at least */
#define BACKLOG_INTERVAL_MS 5000
/* a count this old is made even when rows wait to be sent */
#define BACKLOG_STALE_MS 15000

/* Set up the shared struct once, when it is created */
static void
slots_shmem_init(void *shared)
{
	M3terShared *ms = shared;

	SpinLockInit(&ms->mutex);
	ms->max_databases = m3ter_max_databases;
}

/* The workers' slots in shared memory (while preloading) */
void
m3ter_slots_shmem_install(void)
{
	m3ter_shmem_register("m3ter", add_size(offsetof(M3terShared, db),
										   mul_size(m3ter_max_databases, sizeof(M3terDbSlot))),
						 (void **) &m3ter_shared, slots_shmem_init);
}

/* The slot of a database, or NULL (spinlock held) */
M3terDbSlot *
m3ter_slot_lookup(Oid dboid)
{
	int			i;

	for (i = 0; i < m3ter_shared->max_databases; i++)
		if (m3ter_shared->db[i].dboid == dboid)
			return &m3ter_shared->db[i];
	return NULL;
}

/* Clear a slot's worker and figures, keeping nothing (spinlock held) */
void
m3ter_slot_reset(M3terDbSlot *slot)
{
	memset(slot, 0, sizeof(*slot));
	slot->backlog = -1;
}

/* The slot of a database, taking a free one if needed; NULL when all are taken (spinlock held) */
M3terDbSlot *
m3ter_slot_acquire(Oid dboid, const char *dbname)
{
	M3terDbSlot *slot = m3ter_slot_lookup(dboid);

	if (slot != NULL)
		return slot;
	slot = m3ter_slot_lookup(InvalidOid);
	if (slot == NULL)
		return NULL;
	m3ter_slot_reset(slot);
	slot->dboid = dboid;
	strlcpy(slot->dbname, dbname, sizeof(slot->dbname));
	return slot;
}

/* Add a drain's figures to this database's counters */
void
m3ter_note_delivery(const M3terFlushStats *stats)
{
	M3terDbSlot *slot;
	char	   *dbname = NULL;
	TimestampTz now;

	if (m3ter_shared == NULL || !OidIsValid(MyDatabaseId))
		return;
	/* the name, for a slot this backend may have to take (not under the lock) */
	if (my_slot == NULL && IsTransactionState())
		dbname = get_database_name(MyDatabaseId);
	now = GetCurrentTimestamp();

	SpinLockAcquire(&m3ter_shared->mutex);
	slot = m3ter_slot_lookup(MyDatabaseId);
	if (slot == NULL && dbname != NULL)
	{
		slot = m3ter_slot_acquire(MyDatabaseId, dbname);
		if (slot != NULL)
			slot->launcher_state = M3TER_DB_NO_LAUNCHER;
	}
	if (slot != NULL)
	{
		slot->requests += stats->requests;
		slot->measurements += stats->sent;
		slot->accepted += stats->accepted;
		slot->failed += stats->failed;
		slot->retried += stats->retried;
		slot->resent += stats->resent;
		slot->throttled += stats->throttled;
		if (stats->error != NULL)
		{
			strlcpy(slot->last_error, stats->error, sizeof(slot->last_error));
			slot->last_error_at = now;
		}
		if (stats->accepted > 0)
			slot->last_accepted_at = now;
		sample_accepted(slot, now);
	}
	SpinLockRelease(&m3ter_shared->mutex);
}

/* Commit callback: wake the worker (or the launcher) once the rows are visible */
static void
wake_on_commit(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_at_commit && m3ter_shared != NULL)
			{
				M3terDbSlot *slot;
				Latch	   *latch = NULL;

				SpinLockAcquire(&m3ter_shared->mutex);
				slot = m3ter_slot_lookup(MyDatabaseId);
				if (slot != NULL)
					latch = slot->worker_latch;
				SpinLockRelease(&m3ter_shared->mutex);
				/* the worker's own status updates must not wake it */
				if (latch != NULL && latch != MyLatch)
					SetLatch(latch);
			}
			if (wake_launcher_at_commit && m3ter_shared != NULL)
			{
				Latch	   *latch;

				SpinLockAcquire(&m3ter_shared->mutex);
				if (m3ter_shared->nwakes < M3TER_MAX_WAKES)
					m3ter_shared->wake_dbs[m3ter_shared->nwakes] = MyDatabaseId;
				if (m3ter_shared->nwakes <= M3TER_MAX_WAKES)
					m3ter_shared->nwakes++;
				latch = m3ter_shared->launcher_latch;
				SpinLockRelease(&m3ter_shared->mutex);
				if (latch != NULL)
					SetLatch(latch);
			}
			wake_at_commit = false;
			wake_launcher_at_commit = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			wake_at_commit = false;
			wake_launcher_at_commit = false;
			break;
		default:
			break;
	}
}

/* Make sure the commit callback is registered in this process */
static void
register_wake_callback(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(wake_on_commit, NULL);
		xact_callback_registered = true;
	}
}

/* Wake this database's worker when this transaction commits (called for each written outbox row) */
void
m3ter_wake_worker_at_commit(void)
{
	if (m3ter_shared == NULL || wake_at_commit)
		return;
	register_wake_callback();
	wake_at_commit = true;
}

/* Have the launcher look at this database when this transaction commits */
void
m3ter_wake_launcher_at_commit(void)
{
	if (m3ter_shared == NULL)
		return;
	register_wake_callback();
	wake_launcher_at_commit = true;
}

/* Set the launcher's latch now */
void
m3ter_wake_launcher(void)
{
	Latch	   *latch;

	if (m3ter_shared == NULL)
		return;
	SpinLockAcquire(&m3ter_shared->mutex);
	latch = m3ter_shared->launcher_latch;
	SpinLockRelease(&m3ter_shared->mutex);
	if (latch != NULL)
		SetLatch(latch);
}

/* Forget the worker's latch when it exits, and tell the launcher */
static void
worker_detach(int code, Datum arg)
{
	SpinLockAcquire(&m3ter_shared->mutex);
	if (my_slot->worker_pid == MyProcPid)
	{
		my_slot->worker_latch = NULL;
		my_slot->worker_pid = 0;
	}
	SpinLockRelease(&m3ter_shared->mutex);
	m3ter_wake_launcher();
}

/* End the worker: the extension is not installed in its database */
static void
worker_exit_not_installed(bool dropped)
{
	SpinLockAcquire(&m3ter_shared->mutex);
	my_slot->exit_reason = M3TER_EXIT_NOT_INSTALLED;
	my_slot->launcher_state = M3TER_DB_NOT_INSTALLED;
	SpinLockRelease(&m3ter_shared->mutex);
	if (dropped)
		ereport(LOG,
				(errmsg("m3ter outbox worker for database \"%s\" stopped: the extension was dropped",
						my_slot->dbname)));
	proc_exit(0);
}

/*
 * The backlog, counted row by row (idle: the pending rows are few, or
 * nothing can be sent), or while a delivery runs estimated from the ids
 * after the claims' frontier and the deferred rows of the last count, in
 * a few index probes: counting a large backlog takes long enough to cost
 * the delivery its pacing slots.
 */
static const char backlog_count_sql[] =
"SELECT count(*), min(created_at), count(*) FILTER (WHERE next_attempt_at > created_at), "
"       min(created_at) FILTER (WHERE next_attempt_at > created_at) "
"  FROM m3ter.outbox_pending";
/* The same for an older SQL version (its rows wait for ALTER EXTENSION UPDATE): every version has these columns */
static const char backlog_count_older_sql[] =
"SELECT count(*), min(created_at), 0::bigint, NULL::timestamptz FROM m3ter.outbox WHERE status = 'pending'";
static const char backlog_estimate_sql[] =
"SELECT GREATEST(coalesce((SELECT max(o.id) FROM m3ter.outbox o), 0) - s.frontier, 0), "
"       (SELECT o.created_at FROM m3ter.outbox o WHERE o.id > s.frontier ORDER BY o.id LIMIT 1) "
"  FROM m3ter.claim_state s";

/*
 * Look at the database between passes: is the extension still there (the
 * worker ends if not), and, now and then, how many rows are pending.  Just
 * before a delivery starts only when the last count is stale: counting a
 * fresh backlog reads every row of it, and the first request would wait.
 */
static void
worker_check_database(M3terBacklogCount count)
{
	bool		delivering = count == M3TER_BACKLOG_ESTIMATE;
	static int64 deferred = 0;	/* deferred rows at the last count */
	static TimestampTz deferred_oldest = 0;
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile bool installed = true;
	volatile bool counted = false;
	volatile int64 backlog = -1;
	volatile TimestampTz oldest = 0;
	TimestampTz now = GetCurrentTimestamp();
	bool		count_due;

	if (delivering)
		delivered_since_count = true;
	/*
	 * Counting reads every pending row: not just before a delivery, unless
	 * the last count is stale (rows arriving all the time keep a worker from
	 * ever being idle); at once when a delivery has just ended
	 */
	if (count == M3TER_BACKLOG_IF_STALE)
		count_due = now >= last_backlog_count + BACKLOG_STALE_MS * (int64) 1000 && now >= next_backlog_count;
	else
		count_due = now >= next_backlog_count ||
			(count == M3TER_BACKLOG_COUNT && delivered_since_count && now >= backlog_count_floor);

	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		installed = m3ter_lock_extension();
		if (installed && count_due)
		{
			SPI_connect();
			PushActiveSnapshot(GetTransactionSnapshot());
			/*
			 * the view's branches go by the claims' index paths; with no
			 * pending rows the planner may still guess a full scan cheaper
			 */
			(void) set_config_option("enable_seqscan", "off", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_LOCAL,
									 true, 0, false);
			if (SPI_execute(delivering ? backlog_estimate_sql :
							m3ter_installed_version_state(NULL) == M3TER_VERSION_OK ? backlog_count_sql :
							backlog_count_older_sql, true, 0) == SPI_OK_SELECT &&
				SPI_processed == 1)
			{
				HeapTuple	row = SPI_tuptable->vals[0];
				TupleDesc	desc = SPI_tuptable->tupdesc;
				bool		isnull;
				Datum		d;

				d = SPI_getbinval(row, desc, 1, &isnull);
				backlog = isnull ? 0 : DatumGetInt64(d);
				d = SPI_getbinval(row, desc, 2, &isnull);
				oldest = isnull ? 0 : DatumGetTimestampTz(d);
				if (!delivering)
				{
					d = SPI_getbinval(row, desc, 3, &isnull);
					deferred = isnull ? 0 : DatumGetInt64(d);
					d = SPI_getbinval(row, desc, 4, &isnull);
					deferred_oldest = isnull ? 0 : DatumGetTimestampTz(d);
				}
				else
				{
					backlog += deferred;
					if (deferred_oldest != 0 && (oldest == 0 || deferred_oldest < oldest))
						oldest = deferred_oldest;
				}
				counted = true;
			}
			PopActiveSnapshot();
			SPI_finish();
		}
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		/* a figure for the status views is not worth stopping for */
		MemoryContextSwitchTo(oldcxt);
		FlushErrorState();
		AbortCurrentTransaction();
		installed = true;
		counted = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(oldcxt);

	if (!installed)
		worker_exit_not_installed(true);
	if (counted)
	{
		TimestampTz end = GetCurrentTimestamp();

		/* count at most every 5 s, and spend at most 5% of the time on it */
		if (!delivering)
		{
			last_backlog_count = end;
			delivered_since_count = false;
		}
		backlog_count_floor = TimestampTzPlusMilliseconds(end, 20 * TimestampDifferenceMilliseconds(now, end));
		next_backlog_count = Max(backlog_count_floor, TimestampTzPlusMilliseconds(end, BACKLOG_INTERVAL_MS));
		SpinLockAcquire(&m3ter_shared->mutex);
		my_slot->backlog = backlog;
		my_slot->oldest_pending_at = oldest;
		my_slot->backlog_at = end;
		SpinLockRelease(&m3ter_shared->mutex);
	}
}

/*
 * Called by the worker once connected: take its database's slot, publish
 * its pid, and end (exit code 0, not restarted) when the extension is not
 * installed there or another worker already serves the database.
 */
void
m3ter_worker_attach(void)
{
	M3terDbSlot *slot;
	pid_t		other = 0;
	bool		installed;

	SpinLockAcquire(&m3ter_shared->mutex);
	slot = m3ter_slot_lookup(MyDatabaseId);
	if (slot != NULL && slot->worker_pid != 0 && slot->worker_pid != MyProcPid)
		other = slot->worker_pid;
	SpinLockRelease(&m3ter_shared->mutex);
	if (slot == NULL)
	{
		ereport(LOG,
				(errmsg("m3ter outbox worker for database %u has no slot and stops", MyDatabaseId)));
		proc_exit(0);
	}
	my_slot = slot;
	if (other != 0 && kill(other, 0) == 0)
	{
		SpinLockAcquire(&m3ter_shared->mutex);
		slot->exit_reason = M3TER_EXIT_DUPLICATE;
		SpinLockRelease(&m3ter_shared->mutex);
		proc_exit(0);
	}

	SpinLockAcquire(&m3ter_shared->mutex);
	slot->worker_pid = MyProcPid;
	slot->worker_started_at = GetCurrentTimestamp();
	slot->attached = true;
	slot->exit_reason = M3TER_EXIT_NONE;
	slot->launcher_state = M3TER_DB_RUNNING;
	slot->retry_at = 0;
	strlcpy(slot->worker_state, "starting", sizeof(slot->worker_state));
	SpinLockRelease(&m3ter_shared->mutex);
	on_shmem_exit(worker_detach, (Datum) 0);

	StartTransactionCommand();
	installed = OidIsValid(get_extension_oid("m3ter", true));
	CommitTransactionCommand();
	if (!installed)
		worker_exit_not_installed(false);
	m3ter_wake_launcher();		/* it notes that the database is served */
}

/*
 * Called by the worker before each pass: take wake-ups from committing
 * backends or not (a disabled worker does not listen, and neither does one
 * in the middle of a delivery, so commits do not signal it).  A worker
 * that listens does so before it looks for due rows: a row committed
 * earlier is found by that look, a later one sets the latch.  It also
 * ends the worker (exit code 0) when the launcher or a command on its
 * database asked it to stop, or the extension was dropped.
 */
void
m3ter_worker_listen(bool listen, M3terBacklogCount count)
{
	bool		stop;

	SpinLockAcquire(&m3ter_shared->mutex);
	my_slot->worker_latch = listen ? MyLatch : NULL;
	stop = my_slot->stop_requested;
	SpinLockRelease(&m3ter_shared->mutex);
	if (stop)
	{
		ereport(LOG,
				(errmsg("m3ter outbox worker for database \"%s\" stopped on request", my_slot->dbname)));
		proc_exit(0);
	}
	if (!IsTransactionState())
		worker_check_database(count);
}

/* Called by the worker: what it is doing now */
void
m3ter_worker_note(const char *state, bool drained)
{
	SpinLockAcquire(&m3ter_shared->mutex);
	strlcpy(my_slot->worker_state, state, sizeof(my_slot->worker_state));
	if (drained)
		my_slot->last_drain_at = GetCurrentTimestamp();
	SpinLockRelease(&m3ter_shared->mutex);
}
