/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		State shared by every process that talks to m3ter: request pacing,
 *		the worker's latch and its figures, and waking the worker when
 *		usage rows commit.
 *
 * The shared struct exists only when m3ter is in shared_preload_libraries;
 * without it, pacing is per process and there is no worker to wake.  All
 * fields are protected by the spinlock, held for a few instructions only.
 *
 * Pacing hands out send slots: each request to a host takes the next slot
 * 1/m3ter.max_requests_per_second after the previous one, across all
 * processes, so the worker and any number of m3ter_flush() calls together
 * stay under m3ter's per-host limit.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "m3ter.h"
#include "m3ter_shmem.h"

PG_FUNCTION_INFO_V1(m3ter_worker_status);

M3terShared *m3ter_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* set by the outbox CHECK (outbox_check.c), acted on at commit */
static bool wake_at_commit = false;
static bool xact_callback_registered = false;

/* Ask for our share of shared memory */
static void
m3ter_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(M3terShared)));
	RequestAddinShmemSpace(m3ter_pacing_shmem_size());
	RequestAddinShmemSpace(m3ter_token_shmem_size());
}

/* Create or attach to the shared struct */
static void
m3ter_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	m3ter_shared = ShmemInitStruct("m3ter", sizeof(M3terShared), &found);
	if (!found)
	{
		memset(m3ter_shared, 0, sizeof(M3terShared));
		SpinLockInit(&m3ter_shared->mutex);
	}
	m3ter_pacing_shmem_init();
	m3ter_token_shmem_init();
	LWLockRelease(AddinShmemInitLock);
}

/* Install the shared memory hooks (preload only) */
void
m3ter_shmem_install(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = m3ter_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = m3ter_shmem_startup;
}

/* Add a drain's figures to the shared counters */
void
m3ter_note_delivery(const M3terFlushStats *stats)
{
	if (m3ter_shared == NULL)
		return;
	SpinLockAcquire(&m3ter_shared->mutex);
	m3ter_shared->requests += stats->requests;
	m3ter_shared->measurements += stats->sent;
	m3ter_shared->accepted += stats->accepted;
	m3ter_shared->failed += stats->failed;
	m3ter_shared->retried += stats->retried;
	if (stats->error != NULL)
	{
		strlcpy(m3ter_shared->last_error, stats->error, sizeof(m3ter_shared->last_error));
		m3ter_shared->last_error_at = GetCurrentTimestamp();
	}
	if (stats->accepted > 0)
		m3ter_shared->last_accepted_at = GetCurrentTimestamp();
	SpinLockRelease(&m3ter_shared->mutex);
}

/* Commit callback: wake the worker once the inserted rows are visible */
static void
wake_on_commit(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_at_commit && m3ter_shared != NULL)
			{
				Latch	   *latch;

				SpinLockAcquire(&m3ter_shared->mutex);
				latch = m3ter_shared->worker_latch;
				SpinLockRelease(&m3ter_shared->mutex);
				/* the worker's own status updates must not wake it */
				if (latch != NULL && latch != MyLatch)
					SetLatch(latch);
			}
			wake_at_commit = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			wake_at_commit = false;
			break;
		default:
			break;
	}
}

/* Wake the worker when this transaction commits (called for each written outbox row) */
void
m3ter_wake_worker_at_commit(void)
{
	if (m3ter_shared == NULL || wake_at_commit)
		return;
	if (!xact_callback_registered)
	{
		RegisterXactCallback(wake_on_commit, NULL);
		xact_callback_registered = true;
	}
	wake_at_commit = true;
}

/* Forget the worker's latch when it exits */
static void
worker_detach(int code, Datum arg)
{
	SpinLockAcquire(&m3ter_shared->mutex);
	m3ter_shared->worker_latch = NULL;
	m3ter_shared->worker_pid = 0;
	SpinLockRelease(&m3ter_shared->mutex);
}

/* Called by the worker at start: publish its latch and pid */
void
m3ter_worker_attach(void)
{
	SpinLockAcquire(&m3ter_shared->mutex);
	m3ter_shared->worker_latch = MyLatch;
	m3ter_shared->worker_pid = MyProcPid;
	m3ter_shared->worker_started_at = GetCurrentTimestamp();
	SpinLockRelease(&m3ter_shared->mutex);
	on_shmem_exit(worker_detach, (Datum) 0);
}

/*
 * Called by the worker: take wake-ups from committing backends or not.
 * A disabled worker does not listen, so commits do not signal it.
 */
void
m3ter_worker_listen(bool listen)
{
	SpinLockAcquire(&m3ter_shared->mutex);
	m3ter_shared->worker_latch = listen ? MyLatch : NULL;
	SpinLockRelease(&m3ter_shared->mutex);
}

/* Called by the worker: what it is doing now */
void
m3ter_worker_note(const char *state, bool drained)
{
	SpinLockAcquire(&m3ter_shared->mutex);
	strlcpy(m3ter_shared->worker_state, state, sizeof(m3ter_shared->worker_state));
	if (drained)
		m3ter_shared->last_drain_at = GetCurrentTimestamp();
	SpinLockRelease(&m3ter_shared->mutex);
}

/*
 * m3ter_worker_status(OUT running bool, OUT pid int, OUT state text,
 *		OUT started_at timestamptz, OUT last_drain_at timestamptz,
 *		OUT last_accepted_at timestamptz, OUT requests bigint,
 *		OUT measurements bigint, OUT accepted bigint, OUT failed bigint,
 *		OUT retried bigint, OUT last_error text, OUT last_error_at timestamptz)
 */
Datum
m3ter_worker_status(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[13];
	bool		nulls[13];
	M3terShared copy;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	memset(nulls, 0, sizeof(nulls));

	if (m3ter_shared == NULL)
	{
		memset(nulls, true, sizeof(nulls));
		values[0] = BoolGetDatum(false);
		nulls[0] = false;
		values[2] = CStringGetTextDatum("m3ter is not in shared_preload_libraries");
		nulls[2] = false;
		PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
	}

	SpinLockAcquire(&m3ter_shared->mutex);
	memcpy(&copy, m3ter_shared, sizeof(copy));
	SpinLockRelease(&m3ter_shared->mutex);

#define TS_OR_NULL(i, t) \
	do { if ((t) == 0) nulls[i] = true; else values[i] = TimestampTzGetDatum(t); } while (0)

	values[0] = BoolGetDatum(copy.worker_pid != 0);
	values[1] = Int32GetDatum(copy.worker_pid);
	nulls[1] = copy.worker_pid == 0;
	values[2] = CStringGetTextDatum(copy.worker_pid != 0 ? copy.worker_state : "stopped");
	TS_OR_NULL(3, copy.worker_started_at);
	TS_OR_NULL(4, copy.last_drain_at);
	TS_OR_NULL(5, copy.last_accepted_at);
	values[6] = Int64GetDatum(copy.requests);
	values[7] = Int64GetDatum(copy.measurements);
	values[8] = Int64GetDatum(copy.accepted);
	values[9] = Int64GetDatum(copy.failed);
	values[10] = Int64GetDatum(copy.retried);
	values[11] = CStringGetTextDatum(copy.last_error);
	nulls[11] = copy.last_error[0] == '\0';
	TS_OR_NULL(12, copy.last_error_at);

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
