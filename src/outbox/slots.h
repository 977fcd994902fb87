/*-------------------------------------------------------------------------
 *
 * slots.h
 *		The workers' shared slots (slots.c), for the launcher, the worker,
 *		flushes, the outbox CHECK and the status functions (status.c).
 *
 * One M3terShared per cluster: the launcher's latch,
 * and m3ter.max_databases slots, one per database that has (or had) a
 * worker or delivery figures, keyed by the database's OID.  Every field is
 * protected by the spinlock, held for a few instructions only; slots are
 * found with m3ter_slot_lookup() under that lock.
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_OUTBOX_SLOTS_H
#define M3TER_OUTBOX_SLOTS_H

#include "storage/latch.h"
#include "storage/s_lock.h"
#include "utils/timestamp.h"

#include "outbox/delivery.h"

/* What the launcher knows about a database's worker (M3terDbSlot.launcher_state) */
typedef enum M3terDbState
{
	M3TER_DB_FREE = 0,			/* slot unused */
	M3TER_DB_STARTING,			/* worker registered, not yet connected */
	M3TER_DB_RUNNING,			/* worker connected */
	M3TER_DB_NOT_INSTALLED,		/* no CREATE EXTENSION m3ter there */
	M3TER_DB_UNREACHABLE,		/* the worker could not connect; retried */
	M3TER_DB_NO_WORKER_SLOT,	/* max_worker_processes exhausted; retried */
	M3TER_DB_RESTARTING,		/* the worker died; restarted after a pause */
	M3TER_DB_PAUSED,			/* stopped for DROP/RENAME DATABASE and the like */
	M3TER_DB_FILTERED,			/* not in m3ter.database */
	M3TER_DB_NO_LAUNCHER		/* counted by m3ter_flush() where no worker runs */
} M3terDbState;

/* Why a worker ended on its own (M3terDbSlot.exit_reason) */
typedef enum M3terExitReason
{
	M3TER_EXIT_NONE = 0,
	M3TER_EXIT_NOT_INSTALLED,	/* the extension is not (or no longer) there */
	M3TER_EXIT_DUPLICATE		/* another worker already serves the database */
} M3terExitReason;

/* Samples of the accepted count kept per database (one every RATE_SAMPLE_MS) */
#define M3TER_RATE_SAMPLES 16

typedef struct M3terDbSlot
{
	Oid			dboid;			/* InvalidOid: free */
	char		dbname[NAMEDATALEN];

	/* written by the launcher */
	M3terDbState launcher_state;
	TimestampTz retry_at;		/* when the launcher tries again, or 0 */
	TimestampTz paused_until;	/* no start before this (DDL on the database) */

	/* written by the worker */
	bool		attached;		/* the worker connected at least once */
	M3terExitReason exit_reason;
	bool		stop_requested; /* set by the launcher or a DDL: end at the next pass */
	Latch	   *worker_latch;	/* set to wake it; NULL when not running, disabled or delivering */
	pid_t		worker_pid;
	TimestampTz worker_started_at;
	TimestampTz last_drain_at;
	char		worker_state[96];
	int64		backlog;		/* pending rows when last counted, -1 unknown */
	TimestampTz oldest_pending_at;
	TimestampTz backlog_at;		/* when they were counted */

	/* delivery figures of the worker and m3ter_flush() in this database */
	TimestampTz last_accepted_at;
	int64		requests;
	int64		measurements;
	int64		accepted;
	int64		failed;
	int64		retried;
	int64		resent;
	int64		throttled;		/* 429 answers */
	char		last_error[256];
	TimestampTz last_error_at;

	/* the accepted count, sampled every few seconds: the delivery rate */
	int64		rate_accepted[M3TER_RATE_SAMPLES];
	TimestampTz rate_at[M3TER_RATE_SAMPLES];
	int			rate_next;
} M3terDbSlot;

/* Pending launcher wake-ups (m3ter.launcher_wake() at commit) */
#define M3TER_MAX_WAKES 16

typedef struct M3terShared
{
	slock_t		mutex;

	/* the launcher */
	Latch	   *launcher_latch; /* NULL when not running */
	pid_t		launcher_pid;
	int			nwakes;			/* databases in wake_dbs; > M3TER_MAX_WAKES: all */
	Oid			wake_dbs[M3TER_MAX_WAKES];

	/* per-database slots */
	int			max_databases;
	M3terDbSlot db[FLEXIBLE_ARRAY_MEMBER];
} M3terShared;

extern M3terShared *m3ter_shared;

extern void m3ter_slots_shmem_install(void);
extern void m3ter_wake_worker_at_commit(void);
extern void m3ter_note_delivery(const M3terFlushStats *stats);

/* spinlock held by the caller */
extern M3terDbSlot *m3ter_slot_lookup(Oid dboid);
extern M3terDbSlot *m3ter_slot_acquire(Oid dboid, const char *dbname);
extern void m3ter_slot_reset(M3terDbSlot *slot);

/* called by the worker */
extern void m3ter_worker_attach(void);
/* What a worker's look at its database counts, besides whether m3ter is installed */
typedef enum M3terBacklogCount
{
	M3TER_BACKLOG_IF_STALE,		/* rows may be waiting to be sent: count only a stale figure */
	M3TER_BACKLOG_ESTIMATE,		/* delivering: the ids past the claims' frontier */
	M3TER_BACKLOG_COUNT			/* idle or disabled: every pending row */
} M3terBacklogCount;

extern void m3ter_worker_listen(bool listen, M3terBacklogCount count);
extern void m3ter_worker_note(const char *state, bool drained);
extern void m3ter_wake_launcher(void);
extern void m3ter_wake_launcher_at_commit(void);

#endif							/* M3TER_OUTBOX_SLOTS_H */
