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
 * trigger, which writes it once.  A statement that fails (or whose
 * subtransaction rolls back) never gets there: the value is forgotten at
 * the abort.  A TRUNCATE reads its rows before they go, in SQL.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(m3ter_outbox_note_deleted);
PG_FUNCTION_INFO_V1(m3ter_deleted_ts_max);

/* The latest ts of an accepted row deleted since the last statement trigger */
static bool noted = false;
static TimestampTz noted_ts_max = 0;
static bool callbacks_registered = false;

static void
forget_on_abort(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		noted = false;
}

static void
forget_on_subabort(SubXactEvent event, SubTransactionId mySubid, SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		noted = false;
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
	attnum = SPI_fnumber(trigdata->tg_relation->rd_att, "ts");
	if (attnum <= 0)
		elog(ERROR, "m3ter.outbox has no column ts");
	ts = heap_getattr(row, attnum, trigdata->tg_relation->rd_att, &isnull);
	if (!isnull && (!noted || DatumGetTimestampTz(ts) > noted_ts_max))
	{
		if (!callbacks_registered)
		{
			RegisterXactCallback(forget_on_abort, NULL);
			RegisterSubXactCallback(forget_on_subabort, NULL);
			callbacks_registered = true;
		}
		noted_ts_max = DatumGetTimestampTz(ts);
		noted = true;
	}
	return PointerGetDatum(row);
}

/*
 * m3ter.deleted_ts_max() RETURNS timestamptz: the latest ts noted since the
 * last call (NULL if none), and forget it
 */
Datum
m3ter_deleted_ts_max(PG_FUNCTION_ARGS)
{
	if (!noted)
		PG_RETURN_NULL();
	noted = false;
	PG_RETURN_TIMESTAMPTZ(noted_ts_max);
}
