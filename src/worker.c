/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The background worker that delivers m3ter.outbox continuously.
 *
 * Registered from _PG_init when m3ter is in shared_preload_libraries, it
 * connects to m3ter.database and loops as worker_spi does: wait on its
 * latch, reload settings on SIGHUP, then drain in transactions of at most
 * m3ter.batch_rows rows, each committed on its own.
 *
 * When to wake:
 *	- at once when a transaction that inserted into m3ter.outbox commits
 *	  (the outbox CHECK marks the transaction, its commit sets our latch);
 *	- straight after a drain that claimed rows (there may be more);
 *	- at the earliest next_attempt_at of a row waiting for a retry;
 *	- otherwise after m3ter.worker_naptime, doubling while idle up to
 *	  m3ter.worker_idle_naptime.
 *
 * An error in a drain is logged, its transaction rolled back (the rows
 * stay pending) and the worker sleeps before it tries again; it does not
 * exit.  If it dies anyway, the postmaster restarts it after a second.
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

#include "m3ter.h"
#include "m3ter_shmem.h"

PGDLLEXPORT void m3ter_worker_main(Datum main_arg);

/* Register the worker with the postmaster */
void
m3ter_register_worker(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "m3ter");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "m3ter_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "m3ter outbox worker");
	snprintf(worker.bgw_type, BGW_MAXLEN, "m3ter outbox worker");
	RegisterBackgroundWorker(&worker);
}

/* Is the extension installed in this database? (inside a transaction) */
static bool
extension_installed(void)
{
	int			rc = SPI_execute("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'm3ter'",
								 true, 1);

	return rc == SPI_OK_SELECT && SPI_processed == 1;
}

/* Log an error once, not on every pass while it persists */
static void
log_once(const char *message, char **last_logged)
{
	if (*last_logged != NULL && strcmp(*last_logged, message) == 0)
		return;
	ereport(WARNING,
			(errcode(ERRCODE_M3TER_FORBIDDEN),
			 errmsg("m3ter outbox delivery stopped: %s", message),
			 errhint("The rows stay pending. Fix the settings and reload (SELECT pg_reload_conf()).")));
	if (*last_logged != NULL)
		pfree(*last_logged);
	*last_logged = MemoryContextStrdup(TopMemoryContext, message);
}

/*
 * One pass: a transaction that drains one batch.  Returns how long to
 * sleep before the next pass, in milliseconds (0 for at once).
 */
static long
worker_pass(MemoryContext pass_cxt, char **last_logged, long *idle_ms)
{
	static int64 after = 0;		/* keyset position of the claims */
	M3terFlushStats stats;
	TimestampTz next_due = 0;
	bool		installed;
	bool		from_start = (after == 0);
	long		sleep_ms;

	memset(&stats, 0, sizeof(stats));
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "m3ter: delivering the outbox");

	installed = extension_installed();
	if (installed)
	{
		m3ter_drain_once(m3ter_batch_rows, &after, &stats);
		m3ter_events_poll_if_due();
		if (m3ter_retention_s >= 0)
			(void) m3ter_delete_expired(m3ter_retention_s);
		if (stats.claimed == 0 && from_start)
			next_due = m3ter_next_due();
		if (stats.error != NULL)
			stats.error = MemoryContextStrdup(pass_cxt, stats.error);
	}

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);

	if (!installed)
	{
		m3ter_worker_note("waiting for CREATE EXTENSION m3ter", false);
		return m3ter_worker_idle_naptime_ms;
	}
	m3ter_note_delivery(&stats);

	if (stats.stopped)
	{
		log_once(stats.error, last_logged);
		m3ter_worker_note("stopped: m3ter refused the delivery", true);
		return m3ter_worker_idle_naptime_ms;
	}
	if (*last_logged != NULL)
	{
		ereport(LOG, (errmsg("m3ter outbox delivery resumed")));
		pfree(*last_logged);
		*last_logged = NULL;
	}

	if (stats.claimed > 0 || !from_start)
	{
		/* rows were claimed, or the next claim starts over: go on at once */
		m3ter_worker_note("delivering", true);
		*idle_ms = m3ter_worker_naptime_ms;
		return 0;
	}

	/* idle: sleep longer each time, but wake for the next retry that is due */
	m3ter_worker_note("idle", true);
	sleep_ms = *idle_ms;
	*idle_ms = Min(*idle_ms * 2, (long) m3ter_worker_idle_naptime_ms);
	if (next_due != 0)
	{
		long		due_ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), next_due);

		sleep_ms = Min(sleep_ms, Max(due_ms, 10L));
	}
	return sleep_ms;
}

/* Entry point of the worker */
void
m3ter_worker_main(Datum main_arg)
{
	MemoryContext pass_cxt;
	static char *last_logged = NULL;
	static long idle_ms;
	long		sleep_ms = 0;

	idle_ms = m3ter_worker_naptime_ms;
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(m3ter_database, NULL, 0);
	m3ter_worker_attach();
	m3ter_worker_note("starting", false);
	ereport(LOG, (errmsg("m3ter outbox worker started for database \"%s\"", m3ter_database)));

	pass_cxt = AllocSetContextCreate(TopMemoryContext, "m3ter worker pass",
									 ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		if (sleep_ms > 0)
		{
			int			rc = WaitLatch(MyLatch,
									   WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
									   sleep_ms, PG_WAIT_EXTENSION);

			ResetLatch(MyLatch);
			if (rc & WL_LATCH_SET)
				idle_ms = m3ter_worker_naptime_ms;
		}
		CHECK_FOR_INTERRUPTS();

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			idle_ms = m3ter_worker_naptime_ms;
		}

		m3ter_worker_listen(m3ter_worker_enabled);
		if (!m3ter_worker_enabled)
		{
			m3ter_worker_note("disabled by m3ter.worker_enabled", false);
			sleep_ms = m3ter_worker_idle_naptime_ms;
			continue;
		}

		MemoryContextReset(pass_cxt);
		PG_TRY();
		{
			MemoryContext old = MemoryContextSwitchTo(pass_cxt);

			sleep_ms = worker_pass(pass_cxt, &last_logged, &idle_ms);
			MemoryContextSwitchTo(old);
		}
		PG_CATCH();
		{
			ErrorData  *edata;
			M3terFlushStats failed;

			/* log it, roll the claim back (the rows stay pending), carry on */
			MemoryContextSwitchTo(pass_cxt);
			edata = CopyErrorData();
			FlushErrorState();
			ereport(LOG,
					(errmsg("m3ter outbox worker: %s", edata->message),
					 edata->detail ? errdetail("%s", edata->detail) : 0,
					 edata->hint ? errhint("%s", edata->hint) : 0));
			AbortCurrentTransaction();
			pgstat_report_activity(STATE_IDLE, NULL);
			memset(&failed, 0, sizeof(failed));
			failed.error = edata->message;
			m3ter_note_delivery(&failed);
			m3ter_worker_note("error; retrying", false);
			sleep_ms = m3ter_worker_idle_naptime_ms;
		}
		PG_END_TRY();
	}
}
