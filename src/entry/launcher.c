/*-------------------------------------------------------------------------
 *
 * launcher.c
 *		The launcher: one background worker that starts an outbox worker
 *		(worker.c) in every database where the extension is installed.
 *
 * The launcher is registered at preload and starts once recovery is over,
 * so a standby runs neither it nor any worker.  It connects to no database
 * and reads pg_database (a shared catalog) every M3TER_SCAN_MS and when
 * woken.  Every database that accepts connections, is not a template and
 * passes the m3ter.database filter gets a probe: a dynamic worker started
 * with the database's OID as main_arg and the launcher as bgw_notify_pid.
 * The worker connects, ends at once (exit code 0, silent) when the
 * extension is not installed, and otherwise delivers until told to stop.
 *
 * Learning of installs: the install and upgrade scripts call
 * m3ter.launcher_wake(), which at commit queues the database and sets the
 * launcher's latch, so CREATE EXTENSION is followed by a worker within a
 * second.  A database created after start-up (from a template that has
 * the extension, say) is found by the next scan.
 *
 * When a worker ends, the launcher reads its slot (slots.c) to learn why:
 *	- the extension is not (or no longer) installed: no worker until the
 *	  next install wakes the launcher;
 *	- it never connected (the database is gone or refuses connections):
 *	  logged once, retried with back-off doubling up to five minutes;
 *	- it died: restarted after a second, backing off if it dies young;
 *	- a command on the database paused it (see below): restarted after.
 * No free background worker slot (max_worker_processes) is logged once,
 * with the hint to raise it, and retried with back-off.
 *
 * A worker connected to a database blocks DROP DATABASE, ALTER DATABASE
 * RENAME / SET TABLESPACE and CREATE DATABASE using it as template.  A
 * ProcessUtility hook sees those commands, asks the worker to stop (it
 * exits at its next pass; SIGTERM if it does not within seconds), and
 * waits for it to go before the command runs; the launcher starts it again
 * afterwards, or forgets the database once it is dropped.
 *
 * The launcher's list of databases lives in its own memory; what others
 * must see (each database's state, its worker) is in the shared slots.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>
#include <signal.h>

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/spin.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "entry/launcher.h"
#include "ground/settings.h"
#include "outbox/slots.h"

PGDLLEXPORT void m3ter_launcher_main(Datum main_arg);

PG_FUNCTION_INFO_V1(m3ter_launcher_wake);

/* How often pg_database is read, at least */
#define M3TER_SCAN_MS			10000
/* Back-off limits: unreachable database, no worker slot, worker dying young */
#define M3TER_UNREACHABLE_MAX_MS 300000
#define M3TER_NO_SLOT_MAX_MS	60000
#define M3TER_CRASH_MAX_MS		60000
/* A worker that dies sooner than this after its start backs off */
#define M3TER_YOUNG_MS			10000
/* How long a command on a database waits for its worker to go */
#define M3TER_STOP_WAIT_MS		10000
/* How long a dropped database's worker stays paused if the DROP commits */
#define M3TER_DROP_PAUSE_MS		60000

/*
 * Where a database's worker stands, as the launcher sees it:
 *	NONE --start_worker--> STARTED, or PAUSED (a command on the database),
 *	or NO_SLOT (no background worker slot); an earlier launcher's running
 *	worker is ADOPTED at start; STARTED or ADOPTED --worker_ended--> NONE
 *	(to be started again at next_try), or PAUSED.  PAUSED and NO_SLOT are
 *	NONE with a reason to wait.
 */
typedef enum WorkerPhase
{
	WORKER_NONE,				/* none runs; started at next_try */
	WORKER_STARTED,				/* ours: handle is set */
	WORKER_ADOPTED,				/* started by an earlier launcher */
	WORKER_PAUSED,				/* waiting for slot->paused_until */
	WORKER_NO_SLOT				/* waiting for a background worker slot */
} WorkerPhase;

/* A database the launcher looks after */
typedef struct LauncherDb
{
	Oid			dboid;
	char		name[NAMEDATALEN];
	bool		seen;			/* in the last scan, eligible */
	bool		wanted;			/* should have a worker (not known uninstalled) */
	WorkerPhase phase;
	BackgroundWorkerHandle *handle; /* our worker (WORKER_STARTED), or NULL */
	TimestampTz started_at;
	TimestampTz next_try;		/* 0: as soon as wanted */
	int			backoff_ms;
	bool		logged;			/* the current trouble was logged */
	bool		woken_since_start;	/* m3ter.launcher_wake() named it after its worker started */
} LauncherDb;

/* Does a worker run for the database (ours or adopted), as far as we know? */
#define HAS_WORKER(db) ((db)->phase == WORKER_STARTED || (db)->phase == WORKER_ADOPTED)

static LauncherDb *dbs = NULL;
static int	ndbs = 0;
static int	maxdbs = 0;
static bool slots_full_logged = false;

static ProcessUtility_hook_type prev_utility_hook = NULL;

/* ---------------------------------------------------------------------
 * The launcher's list of databases
 * ---------------------------------------------------------------------
 */

/* The entry of a database, or NULL */
static LauncherDb *
find_db(Oid dboid)
{
	int			i;

	for (i = 0; i < ndbs; i++)
		if (dbs[i].dboid == dboid)
			return &dbs[i];
	return NULL;
}

/* Add a database to the list */
static LauncherDb *
add_db(Oid dboid, const char *name)
{
	LauncherDb *db;

	if (ndbs == maxdbs)
	{
		maxdbs = Max(16, maxdbs * 2);
		if (dbs == NULL)
			dbs = MemoryContextAlloc(TopMemoryContext, maxdbs * sizeof(LauncherDb));
		else
			dbs = repalloc(dbs, maxdbs * sizeof(LauncherDb));
	}
	db = &dbs[ndbs++];
	memset(db, 0, sizeof(*db));
	db->dboid = dboid;
	strlcpy(db->name, name, sizeof(db->name));
	db->wanted = true;
	return db;
}

/* Drop an entry (its worker is gone) */
static void
remove_db(LauncherDb *db)
{
	int			i = db - dbs;

	if (db->handle != NULL)
		pfree(db->handle);
	dbs[i] = dbs[--ndbs];
}

/* Set the state others see for a database */
static void
publish_state(LauncherDb *db, M3terDbState state)
{
	M3terDbSlot *slot;

	SpinLockAcquire(&m3ter_shared->mutex);
	slot = m3ter_slot_lookup(db->dboid);
	if (slot != NULL && slot->worker_pid == 0)
	{
		slot->launcher_state = state;
		slot->retry_at = db->next_try;
	}
	SpinLockRelease(&m3ter_shared->mutex);
}

/* Free a database's slot unless it holds figures worth showing */
static void
release_slot(Oid dboid, bool keep_figures)
{
	M3terDbSlot *slot;

	SpinLockAcquire(&m3ter_shared->mutex);
	slot = m3ter_slot_lookup(dboid);
	if (slot != NULL && slot->worker_pid == 0 &&
		!(keep_figures && (slot->requests > 0 || slot->last_error[0] != '\0')))
		m3ter_slot_reset(slot);
	SpinLockRelease(&m3ter_shared->mutex);
}

/* Is this database's worker (ours or adopted) still there? */
static bool
worker_alive(LauncherDb *db)
{
	if (db->phase == WORKER_STARTED)
	{
		pid_t		pid;

		return GetBackgroundWorkerPid(db->handle, &pid) != BGWH_STOPPED;
	}
	if (db->phase == WORKER_ADOPTED)
	{
		M3terDbSlot *slot;
		bool		alive = false;

		SpinLockAcquire(&m3ter_shared->mutex);
		slot = m3ter_slot_lookup(db->dboid);
		if (slot != NULL)
			alive = slot->worker_pid != 0;
		SpinLockRelease(&m3ter_shared->mutex);
		return alive;
	}
	return false;
}

/* Ask a database's worker to end at its next pass */
static void
request_stop(Oid dboid)
{
	M3terDbSlot *slot;
	Latch	   *latch = NULL;
	pid_t		pid = 0;

	SpinLockAcquire(&m3ter_shared->mutex);
	slot = m3ter_slot_lookup(dboid);
	if (slot != NULL)
	{
		slot->stop_requested = true;
		latch = slot->worker_latch;
		pid = slot->worker_pid;
	}
	SpinLockRelease(&m3ter_shared->mutex);
	if (latch != NULL)
		SetLatch(latch);
	else if (pid != 0)
		kill(pid, SIGUSR1);		/* a disabled or delivering worker does not publish its latch */
}

/* ---------------------------------------------------------------------
 * Scanning pg_database
 * ---------------------------------------------------------------------
 */

typedef struct ScannedDb
{
	Oid			dboid;
	char		name[NAMEDATALEN];
	bool		eligible;
} ScannedDb;

/* Read pg_database; returns the databases in *out (palloc'd in the caller's context) */
static int
scan_pg_database(ScannedDb **out)
{
	MemoryContext caller = CurrentMemoryContext;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	int			n = 0;
	int			max = 16;
	ScannedDb  *list = palloc(max * sizeof(ScannedDb));

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database d = (Form_pg_database) GETSTRUCT(tup);

		if (n == max)
		{
			MemoryContext old = MemoryContextSwitchTo(caller);

			max *= 2;
			list = repalloc(list, max * sizeof(ScannedDb));
			MemoryContextSwitchTo(old);
		}
		list[n].dboid = d->oid;
		strlcpy(list[n].name, NameStr(d->datname), NAMEDATALEN);
		/* templates: a worker connected there would block CREATE DATABASE */
		list[n].eligible = d->datallowconn && !d->datistemplate &&
			d->datconnlimit != -2;	/* -2: left invalid by an interrupted DROP */
		n++;
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller);
	*out = list;
	return n;
}

/* Bring the list in line with pg_database and m3ter.database */
static void
reconcile(void)
{
	ScannedDb  *scanned;
	int			n = scan_pg_database(&scanned);
	int			i;

	for (i = 0; i < ndbs; i++)
		dbs[i].seen = false;
	for (i = 0; i < n; i++)
	{
		LauncherDb *db = find_db(scanned[i].dboid);
		bool		eligible = scanned[i].eligible &&
			m3ter_database_wanted(scanned[i].name);

		if (!eligible)
			continue;
		if (db == NULL)
			db = add_db(scanned[i].dboid, scanned[i].name);
		else if (strcmp(db->name, scanned[i].name) != 0)
		{
			/* renamed: the worker keeps running; only the name shown changes */
			M3terDbSlot *slot;

			strlcpy(db->name, scanned[i].name, sizeof(db->name));
			SpinLockAcquire(&m3ter_shared->mutex);
			slot = m3ter_slot_lookup(db->dboid);
			if (slot != NULL)
				strlcpy(slot->dbname, db->name, sizeof(slot->dbname));
			SpinLockRelease(&m3ter_shared->mutex);
		}
		db->seen = true;
	}
	pfree(scanned);

	/* gone, or filtered out: stop the worker, then forget the database */
	for (i = ndbs - 1; i >= 0; i--)
	{
		LauncherDb *db = &dbs[i];

		if (db->seen)
			continue;
		if (worker_alive(db))
		{
			request_stop(db->dboid);
			continue;
		}
		release_slot(db->dboid, false);
		remove_db(db);
	}
}

/* Queue the databases woken by m3ter.launcher_wake() for a probe now */
static bool
take_wakes(void)
{
	Oid			woken[M3TER_MAX_WAKES];
	int			n;
	int			i;

	SpinLockAcquire(&m3ter_shared->mutex);
	n = m3ter_shared->nwakes;
	memcpy(woken, m3ter_shared->wake_dbs, sizeof(woken));
	m3ter_shared->nwakes = 0;
	SpinLockRelease(&m3ter_shared->mutex);
	if (n == 0)
		return false;

	/* after a scan, so that a database created just now is in the list */
	reconcile();
	for (i = 0; i < ndbs; i++)
	{
		LauncherDb *db = &dbs[i];
		int			j;
		bool		hit = n > M3TER_MAX_WAKES;

		for (j = 0; j < Min(n, M3TER_MAX_WAKES); j++)
			hit |= woken[j] == db->dboid;
		if (hit && !db->wanted)
		{
			db->wanted = true;
			db->next_try = 0;
			db->backoff_ms = 0;
		}
		else if (hit)
			db->woken_since_start = true;
	}
	return true;
}

/* ---------------------------------------------------------------------
 * Starting workers and learning of their ends
 * ---------------------------------------------------------------------
 */

/* Next back-off delay: double from first_ms up to max_ms */
static int
next_backoff(LauncherDb *db, int first_ms, int max_ms)
{
	db->backoff_ms = db->backoff_ms <= 0 ? first_ms : Min(db->backoff_ms * 2, max_ms);
	return db->backoff_ms;
}

/* Start the worker of a database */
static void
start_worker(LauncherDb *db, TimestampTz now)
{
	BackgroundWorker worker;
	M3terDbSlot *slot;
	TimestampTz paused_until = 0;
	MemoryContext oldcxt;
	bool		registered;

	SpinLockAcquire(&m3ter_shared->mutex);
	slot = m3ter_slot_acquire(db->dboid, db->name);
	if (slot != NULL)
	{
		paused_until = slot->paused_until;
		if (paused_until <= now)
		{
			slot->attached = false;
			slot->exit_reason = M3TER_EXIT_NONE;
			slot->stop_requested = false;
			slot->paused_until = 0;
			slot->launcher_state = M3TER_DB_STARTING;
			slot->retry_at = 0;
		}
	}
	SpinLockRelease(&m3ter_shared->mutex);

	if (slot == NULL)
	{
		if (!slots_full_logged)
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("m3ter has no database slot left for database \"%s\"", db->name),
					 errdetail("All %d slots (m3ter.max_databases) are taken by databases whose outbox m3ter delivers or counts.",
							   m3ter_max_databases),
					 errhint("Raise m3ter.max_databases (a restart is needed).")));
		slots_full_logged = true;
		db->next_try = TimestampTzPlusMilliseconds(now, M3TER_SCAN_MS);
		return;
	}
	slots_full_logged = false;
	if (paused_until > now)
	{
		db->next_try = paused_until;
		db->phase = WORKER_PAUSED;
		publish_state(db, M3TER_DB_PAUSED);
		return;
	}
	db->phase = WORKER_NONE;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "m3ter");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "m3ter_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "m3ter outbox worker for database %s", db->name);
	snprintf(worker.bgw_type, BGW_MAXLEN, "m3ter outbox worker");
	worker.bgw_main_arg = ObjectIdGetDatum(db->dboid);
	worker.bgw_notify_pid = MyProcPid;
	strlcpy(worker.bgw_extra, db->name, Min(BGW_EXTRALEN, NAMEDATALEN));

	/* the handle outlives the loop's memory context */
	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	registered = RegisterDynamicBackgroundWorker(&worker, &db->handle);
	MemoryContextSwitchTo(oldcxt);
	if (!registered)
	{
		db->handle = NULL;
		if (!db->logged)
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("m3ter cannot start a worker for database \"%s\": no background worker slot is free",
							db->name),
					 errdetail("max_worker_processes (%d) is shared with parallel queries, logical replication and other extensions such as pg_cron; m3ter needs one for its launcher and one per database that has the extension.",
							   max_worker_processes),
					 errhint("Raise max_worker_processes (a restart is needed). m3ter retries meanwhile.")));
		db->logged = true;
		db->phase = WORKER_NO_SLOT;
		db->next_try = TimestampTzPlusMilliseconds(now, next_backoff(db, 5000, M3TER_NO_SLOT_MAX_MS));
		publish_state(db, M3TER_DB_NO_WORKER_SLOT);
		return;
	}
	db->started_at = now;
	db->phase = WORKER_STARTED;
	db->next_try = 0;
	db->woken_since_start = false;
}

/* A database's worker has ended: learn why from its slot and decide what next */
static void
worker_ended(LauncherDb *db, TimestampTz now)
{
	M3terDbSlot *slot;
	M3terExitReason reason = M3TER_EXIT_NONE;
	bool		attached = false;
	TimestampTz paused_until = 0;

	if (db->handle != NULL)
		pfree(db->handle);
	db->handle = NULL;
	db->phase = WORKER_NONE;

	SpinLockAcquire(&m3ter_shared->mutex);
	slot = m3ter_slot_lookup(db->dboid);
	if (slot != NULL)
	{
		reason = slot->exit_reason;
		attached = slot->attached;
		paused_until = slot->paused_until;
	}
	SpinLockRelease(&m3ter_shared->mutex);

	if (reason == M3TER_EXIT_NOT_INSTALLED && db->woken_since_start)
	{
		/*
		 * dropped and installed again while the worker ran (it may have
		 * looked in between): the install's wake came before this end
		 */
		db->woken_since_start = false;
		db->next_try = 0;
		return;
	}
	if (reason == M3TER_EXIT_NOT_INSTALLED)
	{
		/* nothing to do until m3ter.launcher_wake() says otherwise */
		db->wanted = false;
		db->backoff_ms = 0;
		db->logged = false;
		publish_state(db, M3TER_DB_NOT_INSTALLED);
		release_slot(db->dboid, true);
		return;
	}
	if (paused_until > now)
	{
		db->next_try = paused_until;
		db->phase = WORKER_PAUSED;
		publish_state(db, M3TER_DB_PAUSED);
		return;
	}
	if (!attached && reason == M3TER_EXIT_NONE)
	{
		int			delay = next_backoff(db, 1000, M3TER_UNREACHABLE_MAX_MS);

		if (!db->logged)
			ereport(WARNING,
					(errmsg("m3ter cannot reach database \"%s\": its outbox worker could not connect",
							db->name),
					 errdetail("The server log just before this line says why."),
					 errhint("m3ter tries again, less and less often (up to every %d minutes), and logs again only once it has connected.",
							 M3TER_UNREACHABLE_MAX_MS / 60000)));
		db->logged = true;
		db->next_try = TimestampTzPlusMilliseconds(now, delay);
		publish_state(db, M3TER_DB_UNREACHABLE);
		return;
	}
	if (db->logged && attached)
	{
		ereport(LOG, (errmsg("m3ter outbox worker of database \"%s\" connected again", db->name)));
		db->logged = false;
	}
	/* it died or was stopped: again after a second, backing off if it dies young */
	if (TimestampDifferenceExceeds(db->started_at, now, M3TER_YOUNG_MS))
		db->backoff_ms = 0;
	db->next_try = TimestampTzPlusMilliseconds(now, next_backoff(db, 1000, M3TER_CRASH_MAX_MS));
	publish_state(db, M3TER_DB_RESTARTING);
}

/* Check every worker, start the ones due; returns the ms to sleep at most */
static long
tend_workers(void)
{
	TimestampTz now = GetCurrentTimestamp();
	long		sleep_ms = M3TER_SCAN_MS;
	bool		freed = false;
	int			i;

	for (i = 0; i < ndbs; i++)
	{
		LauncherDb *db = &dbs[i];

		if (HAS_WORKER(db) && !worker_alive(db))
		{
			worker_ended(db, now);
			freed = true;
		}
	}
	/* a worker that ended freed a background worker slot: try the waiting at once */
	for (i = 0; freed && i < ndbs; i++)
		if (dbs[i].phase == WORKER_NO_SLOT)
			dbs[i].next_try = now;

	for (i = 0; i < ndbs; i++)
	{
		LauncherDb *db = &dbs[i];

		if (HAS_WORKER(db))
		{
			/* a worker that connected once is no longer in trouble */
			if (db->logged)
			{
				M3terDbSlot *slot;
				bool		attached = false;

				SpinLockAcquire(&m3ter_shared->mutex);
				slot = m3ter_slot_lookup(db->dboid);
				if (slot != NULL)
					attached = slot->attached && slot->worker_pid != 0;
				SpinLockRelease(&m3ter_shared->mutex);
				if (attached)
				{
					ereport(LOG, (errmsg("m3ter outbox worker of database \"%s\" is running", db->name)));
					db->logged = false;
					db->backoff_ms = 0;
				}
				else
					sleep_ms = Min(sleep_ms, 1000L);
			}
			continue;
		}
		if (!db->wanted || !db->seen)
			continue;
		if (db->phase == WORKER_PAUSED)
		{
			/* the command that paused it may have ended early */
			M3terDbSlot *slot;

			SpinLockAcquire(&m3ter_shared->mutex);
			slot = m3ter_slot_lookup(db->dboid);
			if (slot != NULL)
				db->next_try = slot->paused_until;
			SpinLockRelease(&m3ter_shared->mutex);
		}
		if (db->next_try <= now)
			start_worker(db, now);
		if (db->phase != WORKER_STARTED && db->next_try > now)
			sleep_ms = Min(sleep_ms, Max(TimestampDifferenceMilliseconds(now, db->next_try), 10L));
	}
	return sleep_ms;
}

/* Take over the workers an earlier launcher left running */
static void
adopt_workers(void)
{
	int			i;

	for (i = 0; i < m3ter_shared->max_databases; i++)
	{
		M3terDbSlot copy;

		SpinLockAcquire(&m3ter_shared->mutex);
		memcpy(&copy, &m3ter_shared->db[i], sizeof(copy));
		SpinLockRelease(&m3ter_shared->mutex);
		if (OidIsValid(copy.dboid) && copy.worker_pid != 0 && find_db(copy.dboid) == NULL)
		{
			LauncherDb *db = add_db(copy.dboid, copy.dbname);

			db->phase = WORKER_ADOPTED;
			db->started_at = copy.worker_started_at;
		}
	}
}

/* Forget the launcher's latch when it exits */
static void
launcher_detach(int code, Datum arg)
{
	SpinLockAcquire(&m3ter_shared->mutex);
	m3ter_shared->launcher_latch = NULL;
	m3ter_shared->launcher_pid = 0;
	SpinLockRelease(&m3ter_shared->mutex);
}

/* Entry point of the launcher */
void
m3ter_launcher_main(Datum main_arg)
{
	MemoryContext loop_cxt;
	TimestampTz next_scan = 0;
	long		sleep_ms = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	ConfigReloadPending = true;	/* a reload signalled while starting (see worker.c) */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("m3ter launcher");

	SpinLockAcquire(&m3ter_shared->mutex);
	m3ter_shared->launcher_latch = MyLatch;
	m3ter_shared->launcher_pid = MyProcPid;
	SpinLockRelease(&m3ter_shared->mutex);
	on_shmem_exit(launcher_detach, (Datum) 0);
	ereport(LOG, (errmsg("m3ter launcher started")));

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "m3ter launcher loop",
									 ALLOCSET_DEFAULT_SIZES);
	adopt_workers();

	for (;;)
	{
		bool		woken;

		if (sleep_ms > 0)
		{
			(void) WaitLatch(MyLatch,
							 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 sleep_ms, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
		CHECK_FOR_INTERRUPTS();
		MemoryContextReset(loop_cxt);
		MemoryContextSwitchTo(loop_cxt);

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			next_scan = 0;		/* m3ter.database may have changed */
		}

		woken = take_wakes();
		if (woken || GetCurrentTimestamp() >= next_scan)
		{
			if (!woken)
				reconcile();
			next_scan = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), M3TER_SCAN_MS);
		}
		sleep_ms = tend_workers();
		sleep_ms = Min(sleep_ms, Max(TimestampDifferenceMilliseconds(GetCurrentTimestamp(), next_scan), 10L));
		MemoryContextSwitchTo(TopMemoryContext);
		pgstat_report_stat(true);
	}
}

/* Register the launcher with the postmaster (preload only) */
static void
register_launcher(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "m3ter");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "m3ter_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "m3ter launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "m3ter launcher");
	RegisterBackgroundWorker(&worker);
}

/* ---------------------------------------------------------------------
 * Commands that need a database without other sessions
 * ---------------------------------------------------------------------
 */

/* The database a utility command needs to itself, or InvalidOid */
static Oid
database_needing_exclusivity(Node *parsetree, bool *is_drop)
{
	ListCell   *lc;

	*is_drop = false;
	switch (nodeTag(parsetree))
	{
		case T_DropdbStmt:
			*is_drop = true;
			return get_database_oid(((DropdbStmt *) parsetree)->dbname, true);
		case T_RenameStmt:
			if (((RenameStmt *) parsetree)->renameType == OBJECT_DATABASE)
				return get_database_oid(((RenameStmt *) parsetree)->subname, true);
			break;
		case T_CreatedbStmt:
			foreach(lc, ((CreatedbStmt *) parsetree)->options)
			{
				DefElem    *opt = lfirst(lc);

				if (strcmp(opt->defname, "template") == 0 && opt->arg != NULL)
					return get_database_oid(defGetString(opt), true);
			}
			break;
		case T_AlterDatabaseStmt:
			foreach(lc, ((AlterDatabaseStmt *) parsetree)->options)
			{
				DefElem    *opt = lfirst(lc);

				if (strcmp(opt->defname, "tablespace") == 0)
					return get_database_oid(((AlterDatabaseStmt *) parsetree)->dbname, true);
			}
			break;
		default:
			break;
	}
	return InvalidOid;
}

/* Stop a database's worker for a command, waiting for it to go; true if one was there */
static bool
pause_worker(Oid dboid, int pause_ms)
{
	M3terDbSlot *slot;
	pid_t		pid = 0;
	TimestampTz start = GetCurrentTimestamp();
	bool		signalled = false;

	SpinLockAcquire(&m3ter_shared->mutex);
	slot = m3ter_slot_lookup(dboid);
	if (slot != NULL)
	{
		slot->paused_until = TimestampTzPlusMilliseconds(start, pause_ms);
		pid = slot->worker_pid;
	}
	SpinLockRelease(&m3ter_shared->mutex);
	if (slot == NULL)
		return false;
	if (pid == 0)
		return true;

	request_stop(dboid);
	for (;;)
	{
		TimestampTz now = GetCurrentTimestamp();

		SpinLockAcquire(&m3ter_shared->mutex);
		pid = slot->dboid == dboid ? slot->worker_pid : 0;
		SpinLockRelease(&m3ter_shared->mutex);
		if (pid == 0)
			break;
		/* busy in a long request: interrupt it (its claim rolls back) */
		if (!signalled && TimestampDifferenceExceeds(start, now, 2000))
		{
			kill(pid, SIGTERM);
			signalled = true;
		}
		if (TimestampDifferenceExceeds(start, now, M3TER_STOP_WAIT_MS))
			break;
		CHECK_FOR_INTERRUPTS();
		pg_usleep(10000L);
	}
	return true;
}

/* Let the launcher start a paused database's worker again after delay_ms */
static void
resume_worker(Oid dboid, int delay_ms)
{
	M3terDbSlot *slot;

	SpinLockAcquire(&m3ter_shared->mutex);
	slot = m3ter_slot_lookup(dboid);
	if (slot != NULL)
		slot->paused_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay_ms);
	SpinLockRelease(&m3ter_shared->mutex);
	m3ter_wake_launcher();
}

/* ProcessUtility hook: stop a database's worker for commands it would block */
static void
m3ter_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
			  ProcessUtilityContext context, ParamListInfo params,
			  QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Oid			target = InvalidOid;
	bool		drop = false;
	volatile Oid dboid;
	volatile bool is_drop;
	volatile bool paused = false;

	if (m3ter_shared != NULL)
		target = database_needing_exclusivity(pstmt->utilityStmt, &drop);
	if (OidIsValid(target))
		paused = pause_worker(target, drop ? M3TER_DROP_PAUSE_MS : M3TER_STOP_WAIT_MS * 2);
	dboid = target;
	is_drop = drop;

	PG_TRY();
	{
		if (prev_utility_hook)
			prev_utility_hook(pstmt, queryString, readOnlyTree, context, params,
							  queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
									queryEnv, dest, qc);
	}
	PG_CATCH();
	{
		if (paused)
			resume_worker(dboid, 0);
		PG_RE_THROW();
	}
	PG_END_TRY();
	/* a dropped database stays paused until the launcher forgets it */
	if (paused && !is_drop)
		resume_worker(dboid, 1000);
	else if (paused)
		m3ter_wake_launcher();
}

/* ---------------------------------------------------------------------
 * Entry points
 * ---------------------------------------------------------------------
 */

/* Preload: the launcher's setting, the launcher itself and the utility hook */
void
m3ter_launcher_install(void)
{
	register_launcher();
	prev_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = m3ter_utility;
}

/*
 * m3ter.launcher_wake() RETURNS void
 *
 * Have the launcher look at this database once the transaction commits;
 * the install and upgrade scripts call it.
 */
Datum
m3ter_launcher_wake(PG_FUNCTION_ARGS)
{
	m3ter_wake_launcher_at_commit();
	PG_RETURN_VOID();
}
