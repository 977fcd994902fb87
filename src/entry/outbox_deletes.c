/*-------------------------------------------------------------------------
 *
 * outbox_deletes.c
 *		What leaves the outbox after m3ter accepted it: the latest ts.
 *
 * Reconciliation compares m3ter's usage with the outbox's accepted rows, so
 * a day whose accepted rows were deleted (by m3ter.retention, a DELETE of
 * the user's, a TRUNCATE) would show m3ter's usage of them as drift, and
 * settling it would bill it back.  m3ter.retention_state keeps the latest
 * ts of such a row; m3ter_reconcile() refuses windows that start before it.
 *
 * m3ter.outbox_note_deleted() is a BEFORE DELETE row trigger (WHEN the row
 * is accepted) that only keeps the latest ts in memory, with no query per
 * row; m3ter.deleted_ts_max() hands it to the statement's AFTER DELETE
 * trigger, which writes it once.  What a subtransaction noted is forgotten
 * when it rolls back (its deletes are undone), and only then: an
 * exception block inside the statement (a function in its RETURNING, a
 * trigger of the user's) rolls back a subtransaction of its own, and a
 * DELETE in there writes only what it noted itself.  A
 * TRUNCATE reads its rows before they go, in SQL.  A subscription's apply
 * (blue/green: the outbox a copy of the publisher's) fires no statement
 * trigger: there each row is written at once.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "replication/logicalworker.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(m3ter_outbox_note_deleted);
PG_FUNCTION_INFO_V1(m3ter_deleted_ts_max);

/*
 * The latest ts noted in each subtransaction since the last statement
 * trigger, innermost last.  Deeper nesting than this is kept in the last
 * entry: a rollback of the inner one then keeps its ts, which only refuses
 * a window more than needed.
 */
#define MAX_NOTED_LEVELS 16

typedef struct Noted
{
	SubTransactionId subid;
	TimestampTz ts_max;
} Noted;

static Noted noted[MAX_NOTED_LEVELS];
static int	n_noted = 0;
static bool callbacks_registered = false;

static void
forget_on_abort(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		n_noted = 0;
}

/*
 * A subtransaction that rolls back, and the ones inside it, began no
 * earlier than it: what they noted goes
 */
static void
forget_on_subabort(SubXactEvent event, SubTransactionId mySubid, SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		while (n_noted > 0 && noted[n_noted - 1].subid >= mySubid)
			n_noted--;
}

static void
note(TimestampTz ts)
{
	SubTransactionId subid = GetCurrentSubTransactionId();

	if (!callbacks_registered)
	{
		RegisterXactCallback(forget_on_abort, NULL);
		RegisterSubXactCallback(forget_on_subabort, NULL);
		callbacks_registered = true;
	}
	if (n_noted > 0 && (noted[n_noted - 1].subid == subid || n_noted == MAX_NOTED_LEVELS))
	{
		noted[n_noted - 1].ts_max = Max(noted[n_noted - 1].ts_max, ts);
		return;
	}
	noted[n_noted].subid = subid;
	noted[n_noted].ts_max = ts;
	n_noted++;
}

/* BEFORE DELETE FOR EACH ROW WHEN (OLD.status = 'accepted'): note the row's ts */
Datum
m3ter_outbox_note_deleted(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	row;
	bool		isnull;
	Datum		ts;
	int			attnum;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) || !TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		elog(ERROR, "m3ter.outbox_note_deleted() must be a BEFORE DELETE row trigger");
	row = trigdata->tg_trigtuple;
	/* the column's number, looked up once a statement (fn_extra lives as long as the trigger's call info) */
	if (fcinfo->flinfo->fn_extra == NULL)
	{
		attnum = SPI_fnumber(trigdata->tg_relation->rd_att, "ts");
		if (attnum <= 0)
			elog(ERROR, "m3ter.outbox has no column ts");
		fcinfo->flinfo->fn_extra = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(int));
		*(int *) fcinfo->flinfo->fn_extra = attnum;
	}
	attnum = *(int *) fcinfo->flinfo->fn_extra;
	ts = heap_getattr(row, attnum, trigdata->tg_relation->rd_att, &isnull);
	if (isnull)
		return PointerGetDatum(row);
	if (IsLogicalWorker())
	{
		Oid			types[1] = {TIMESTAMPTZOID};

		if (SPI_connect() != SPI_OK_CONNECT ||
			SPI_execute_with_args("SELECT m3ter.mark_deleted($1)", 1, types, &ts, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "m3ter could not mark a deleted row");
		SPI_finish();
	}
	else
		note(DatumGetTimestampTz(ts));
	return PointerGetDatum(row);
}

/*
 * m3ter.deleted_ts_max() RETURNS timestamptz: the latest ts noted in this
 * subtransaction and those inside it (NULL if none), and forget it.  What
 * an outer one noted is left to its own statement's trigger: a DELETE run
 * inside the statement, in an exception block that then rolls back, would
 * take it into its rollback.
 */
Datum
m3ter_deleted_ts_max(PG_FUNCTION_ARGS)
{
	SubTransactionId here = GetCurrentSubTransactionId();
	bool		found = false;
	TimestampTz latest = 0;
	int			kept = 0;
	int			i;

	for (i = 0; i < n_noted; i++)
	{
		if (noted[i].subid >= here)
		{
			latest = found ? Max(latest, noted[i].ts_max) : noted[i].ts_max;
			found = true;
		}
		else
			noted[kept++] = noted[i];
	}
	n_noted = kept;
	if (!found)
		PG_RETURN_NULL();
	PG_RETURN_TIMESTAMPTZ(latest);
}
