/*-------------------------------------------------------------------------
 *
 * status.c
 *		What the slots say, for SQL: m3ter_worker_status() (this database's
 *		worker and figures) and m3ter.databases (every database's), with the
 *		delivery rate and the time the backlog takes at it.
 *
 * Each copies the slots it reads under the spinlock and builds its rows
 * after releasing it.  Without the preload there are no slots: the
 * worker is reported as not running, with the reason as its state, and
 * m3ter.databases is empty.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "access/xlog.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "outbox/slots.h"
#include "ground/settings.h"

PG_FUNCTION_INFO_V1(m3ter_worker_status);
PG_FUNCTION_INFO_V1(m3ter_databases);

/* The delivery rate is taken over about this window */
#define RATE_WINDOW_S 60

/*
 * Rows accepted a second over about the last minute: since the newest
 * sample at least a minute old (or the oldest one, for a young worker)
 */
static double
delivery_rate(const M3terDbSlot *slot, TimestampTz now)
{
	TimestampTz from = now - (int64) RATE_WINDOW_S * USECS_PER_SEC;
	int			base = -1;
	int			oldest = -1;
	int			i;

	for (i = 0; i < M3TER_RATE_SAMPLES; i++)
	{
		if (slot->rate_at[i] == 0)
			continue;
		if (slot->rate_at[i] <= from && (base < 0 || slot->rate_at[i] > slot->rate_at[base]))
			base = i;
		if (oldest < 0 || slot->rate_at[i] < slot->rate_at[oldest])
			oldest = i;
	}
	if (base < 0)
		base = oldest;
	if (base < 0)
		return 0;
	return (slot->accepted - slot->rate_accepted[base]) /
		Max((double) (now - slot->rate_at[base]) / USECS_PER_SEC, 1.0);
}

/* The rate (two decimals) and the time the backlog takes at it (NULL when idle) */
static void
rate_and_eta(const M3terDbSlot *slot, TimestampTz now, Datum *values, bool *nulls)
{
	double		rate = round(delivery_rate(slot, now) * 100) / 100;

	values[0] = DirectFunctionCall1(float8_numeric, Float8GetDatum(rate));
	nulls[0] = false;
	nulls[1] = rate <= 0 || slot->backlog <= 0 || slot->backlog_at == 0;
	if (!nulls[1])
	{
		Interval   *eta = palloc0(sizeof(Interval));

		eta->time = (int64) ceil(slot->backlog / rate) * USECS_PER_SEC;
		values[1] = IntervalPGetDatum(eta);
	}
}

/* What to call the state of a database's delivery */
static const char *
state_text(const M3terDbSlot *slot)
{
	if (slot->worker_pid != 0)
		return slot->worker_state;
	if (slot->dbname[0] != '\0' && !m3ter_database_wanted(slot->dbname))
		return "not in m3ter.database";
	switch (slot->launcher_state)
	{
		case M3TER_DB_STARTING:
			return "starting";
		case M3TER_DB_NOT_INSTALLED:
			return "extension not installed";
		case M3TER_DB_UNREACHABLE:
			return "database unreachable; retrying";
		case M3TER_DB_NO_WORKER_SLOT:
			return "waiting for a background worker slot (max_worker_processes)";
		case M3TER_DB_RESTARTING:
			return "restarting";
		case M3TER_DB_PAUSED:
			return "paused for a command on the database";
		case M3TER_DB_FILTERED:
			return "not in m3ter.database";
		case M3TER_DB_NO_LAUNCHER:
		case M3TER_DB_RUNNING:
		case M3TER_DB_FREE:
			break;
	}
	return "stopped";
}

#define TS_OR_NULL(i, t) \
	do { if ((t) == 0) nulls[i] = true; else values[i] = TimestampTzGetDatum(t); } while (0)

/*
 * m3ter_worker_status(OUT running bool, OUT pid int, OUT state text,
 *		OUT started_at timestamptz, OUT last_drain_at timestamptz,
 *		OUT last_accepted_at timestamptz, OUT requests bigint,
 *		OUT measurements bigint, OUT accepted bigint, OUT failed bigint,
 *		OUT retried bigint, OUT last_error text, OUT last_error_at timestamptz
 *		[, OUT resent bigint since 1.1])
 *
 * This database's worker and the figures of deliveries made here.
 */
Datum
m3ter_worker_status(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[16];
	bool		nulls[16];
	M3terDbSlot copy;
	bool		found = false;
	bool		launcher = false;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (tupdesc->natts > lengthof(values))
		elog(ERROR, "unexpected result type of m3ter_worker_status");
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
	{
		M3terDbSlot *slot = m3ter_slot_lookup(MyDatabaseId);

		if (slot != NULL)
		{
			memcpy(&copy, slot, sizeof(copy));
			found = true;
		}
		launcher = m3ter_shared->launcher_pid != 0;
	}
	SpinLockRelease(&m3ter_shared->mutex);
	if (!found)
	{
		memset(&copy, 0, sizeof(copy));
		copy.launcher_state = M3TER_DB_FREE;
	}

	values[0] = BoolGetDatum(copy.worker_pid != 0);
	values[1] = Int32GetDatum(copy.worker_pid);
	nulls[1] = copy.worker_pid == 0;
	if (copy.worker_pid == 0 && RecoveryInProgress())
		values[2] = CStringGetTextDatum("standby: delivery starts on promotion");
	else if (!found && launcher && !m3ter_database_wanted(get_database_name(MyDatabaseId)))
		values[2] = CStringGetTextDatum("not in m3ter.database");
	else if (!found && launcher)
		values[2] = CStringGetTextDatum("no worker for this database yet");
	else
		values[2] = CStringGetTextDatum(state_text(&copy));
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
	values[13] = Int64GetDatum(copy.resent);
	rate_and_eta(&copy, GetCurrentTimestamp(), &values[14], &nulls[14]);

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * m3ter_databases(): one row per database slot, cluster-wide: datid,
 * datname, state, running, pid, started_at, last_drain_at,
 * last_accepted_at, requests, measurements, accepted, failed, retried,
 * resent, pending, oldest_pending_at, pending_counted_at, last_error,
 * last_error_at.
 */
Datum
m3ter_databases(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TimestampTz now;
	M3terDbSlot *copies;
	int			n = 0;
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	if (m3ter_shared == NULL)
		PG_RETURN_VOID();

	now = GetCurrentTimestamp();
	copies = palloc(sizeof(M3terDbSlot) * m3ter_shared->max_databases);
	SpinLockAcquire(&m3ter_shared->mutex);
	for (i = 0; i < m3ter_shared->max_databases; i++)
		if (OidIsValid(m3ter_shared->db[i].dboid))
			memcpy(&copies[n++], &m3ter_shared->db[i], sizeof(M3terDbSlot));
	SpinLockRelease(&m3ter_shared->mutex);

	for (i = 0; i < n; i++)
	{
		M3terDbSlot *s = &copies[i];
		Datum		values[22];
		bool		nulls[22];

		memset(nulls, 0, sizeof(nulls));
		values[0] = ObjectIdGetDatum(s->dboid);
		values[1] = CStringGetTextDatum(s->dbname);
		values[2] = CStringGetTextDatum(state_text(s));
		values[3] = BoolGetDatum(s->worker_pid != 0);
		values[4] = Int32GetDatum(s->worker_pid);
		nulls[4] = s->worker_pid == 0;
		TS_OR_NULL(5, s->worker_started_at);
		TS_OR_NULL(6, s->last_drain_at);
		TS_OR_NULL(7, s->last_accepted_at);
		values[8] = Int64GetDatum(s->requests);
		values[9] = Int64GetDatum(s->measurements);
		values[10] = Int64GetDatum(s->accepted);
		values[11] = Int64GetDatum(s->failed);
		values[12] = Int64GetDatum(s->retried);
		values[13] = Int64GetDatum(s->resent);
		values[14] = Int64GetDatum(s->backlog);
		nulls[14] = s->backlog < 0 || s->backlog_at == 0;
		TS_OR_NULL(15, s->oldest_pending_at);
		TS_OR_NULL(16, s->backlog_at);
		values[17] = CStringGetTextDatum(s->last_error);
		nulls[17] = s->last_error[0] == '\0';
		TS_OR_NULL(18, s->last_error_at);
		rate_and_eta(s, now, &values[19], &nulls[19]);
		values[21] = Int64GetDatum(s->throttled);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	PG_RETURN_VOID();
}
