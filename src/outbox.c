/*-------------------------------------------------------------------------
 *
 * outbox.c
 *		Draining m3ter.outbox: claim due rows, send them in full requests,
 *		write each row's result back.  Serves m3ter_flush() and the worker.
 *
 * Delivery is at-least-once with a stable identity, which m3ter's
 * idempotent ingest (by uid, within 35 days) turns into exactly-once:
 *
 *	- Rows are claimed with FOR UPDATE SKIP LOCKED, so the worker and any
 *	  number of m3ter_flush() calls never send the same row at once.  The
 *	  row lock is the only in-flight marker: a crash at any moment rolls
 *	  the claim back and leaves the rows pending, to be sent again with
 *	  the same uid.  No row can be stuck in flight.
 *	- A row becomes 'accepted' only in the transaction that saw m3ter's
 *	  2xx answer for it.
 *	- 400 (and other 4xx but 403, 404, 413): the request is split in
 *	  halves until the rejected measurements are alone; those are marked
 *	  'failed' with m3ter's message and the rest are delivered.
 *	- 413: split in halves; a lone measurement is 'failed'.
 *	- 429, 5xx, network faults: the rows stay 'pending' with attempts + 1
 *	  and next_attempt_at pushed back 1 s, 3 s, 9 s, ... (Retry-After
 *	  honoured), until m3ter.max_attempts makes them 'failed'.
 *	- 403 with a fresh token, 404, refused credentials: a configuration
 *	  problem, not the rows' fault.  Sending stops, the rows stay pending
 *	  with the error noted, attempts untouched.
 *	- A row too large to ever fit in a request is 'failed' without sending.
 *
 * Claims walk the pending index as a keyset: each continues after the last
 * id the previous one took, and only a short claim sends the next one back
 * to the start (where rows due for a retry, or committed late with a lower
 * id, are found).  Restarting every claim from the start would step over
 * the index entries of all rows claimed since the last vacuum, making a
 * large drain quadratic.
 *
 * The caller owns the transaction and the SPI connection.  Each drain
 * works in its own memory context, deleted at its end.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/memutils.h"

#include "m3ter.h"

PG_FUNCTION_INFO_V1(m3ter_flush);

/* Columns of the claim query, 1-based as SPI numbers them */
#define COL_ID			1
#define COL_UID			2
#define COL_METER		3
#define COL_ACCOUNT		4
#define COL_TS			5
#define COL_ETS			6
#define COL_FIRST_MAP	7

static const char claim_sql[] =
"SELECT id, uid, meter, account, ts, ets, measure, cost, income, who, \"where\", what, other, metadata "
"FROM m3ter.outbox "
"WHERE status = 'pending' AND next_attempt_at <= now() AND id > $2 "
"ORDER BY id "
"LIMIT $1 "
"FOR UPDATE SKIP LOCKED";

static const char accepted_sql[] =
"UPDATE m3ter.outbox SET status = 'accepted', attempts = attempts + 1, "
"http_status = $2, error = NULL, sent_at = clock_timestamp(), accepted_at = clock_timestamp() "
"WHERE id = ANY($1)";

static const char failed_sql[] =
"UPDATE m3ter.outbox SET status = 'failed', attempts = attempts + $4, "
"http_status = $2, error = $3, sent_at = CASE WHEN $4 > 0 THEN clock_timestamp() ELSE sent_at END "
"WHERE id = ANY($1)";

static const char retry_sql[] =
"WITH u AS (UPDATE m3ter.outbox SET attempts = attempts + 1, http_status = $2, error = $3, "
"sent_at = clock_timestamp(), "
"status = CASE WHEN attempts + 1 >= $4 THEN 'failed' ELSE 'pending' END, "
"next_attempt_at = clock_timestamp() + m3ter.backoff_delay(attempts, $5) "
"WHERE id = ANY($1) RETURNING status) "
"SELECT count(*) FILTER (WHERE status = 'failed') FROM u";

static const char held_sql[] =
"UPDATE m3ter.outbox SET http_status = $2, error = $3 WHERE id = ANY($1)";

static const char check_held_sql[] =
"UPDATE m3ter.outbox SET error = $3, next_attempt_at = clock_timestamp() + make_interval(secs => $4) "
"WHERE id = ANY($1)";

/* The status updates of update_rows(), in the order of its statements */
typedef enum RowUpdate
{
	ROWS_ACCEPTED,				/* m3ter accepted them */
	ROWS_FAILED,				/* never to be sent again */
	ROWS_RETRY,					/* a transient fault: try later, or fail at max_attempts */
	ROWS_HELD,					/* a configuration fault: note it, keep them pending */
	ROWS_CHECK_HELD				/* held by a check before sending: pending, later ($4 s) */
} RowUpdate;

/* One drain's rows, written as JSON */
typedef struct Drain
{
	int			n;
	int64	   *ids;
	char	  **items;
	int		   *lengths;
	const char *path;
	StringInfoData payload;
	M3terFlushStats *stats;
} Drain;

/* Prepare and keep a plan once per process */
static SPIPlanPtr
keep_plan(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes)
{
	if (*slot == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for m3ter outbox query: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		*slot = plan;
	}
	return *slot;
}

/* Run one of the row-update statements for ids[start..end) */
static int64
update_rows(Drain *d, RowUpdate which, int start, int end, long http_status,
			const char *error, int sent, int retry_after_ms)
{
	static SPIPlanPtr plans[5];
	static const char *const sqls[5] = {accepted_sql, failed_sql, retry_sql, held_sql, check_held_sql};
	static const int nargs[5] = {2, 4, 5, 3, 4};
	Oid			types[5] = {INT8ARRAYOID, INT4OID, TEXTOID, INT4OID, INT4OID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	Datum	   *elems = palloc((end - start) * sizeof(Datum));
	int			i;
	int			rc;
	int64		result = 0;

	for (i = start; i < end; i++)
		elems[i - start] = Int64GetDatum(d->ids[i]);
	values[0] = PointerGetDatum(construct_array(elems, end - start, INT8OID,
												sizeof(int64), FLOAT8PASSBYVAL,
												TYPALIGN_DOUBLE));
	values[1] = Int32GetDatum((int32) http_status);
	if (http_status == 0)
		nulls[1] = 'n';
	values[2] = error ? CStringGetTextDatum(error) : (Datum) 0;
	if (error == NULL)
		nulls[2] = 'n';
	values[3] = Int32GetDatum(which == ROWS_FAILED || which == ROWS_CHECK_HELD ? sent : m3ter_max_attempts);
	values[4] = Int32GetDatum(retry_after_ms);

	rc = SPI_execute_plan(keep_plan(&plans[which], sqls[which], nargs[which], types),
						  values, nulls, false, 0);
	if (rc < 0)
		elog(ERROR, "m3ter outbox update failed: %s", SPI_result_code_string(rc));
	if (which == ROWS_RETRY && SPI_processed == 1)
	{
		bool		isnull;

		result = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 1, &isnull));
	}
	if (SPI_tuptable)
		SPI_freetuptable(SPI_tuptable);
	pfree(elems);
	return result;
}

/* Send rows [start, end) as one request and record the outcome, splitting as needed */
static void
deliver(Drain *d, int start, int end)
{
	M3terFlushStats *stats = d->stats;
	M3terCallResult res;
	int			n = end - start;

	if (stats->stopped)
		return;

	m3ter_build_payload(&d->payload, d->items, start, end);
	m3ter_call(M3TER_INGEST_API, "POST", d->path, d->payload.data, d->payload.len,
			   0, &res);
	stats->requests += res.requests;
	stats->sent += n;

	switch (res.outcome)
	{
		case M3TER_OK:
			update_rows(d, ROWS_ACCEPTED, start, end, res.status, NULL, 1, 0);
			stats->accepted += n;
			return;

		case M3TER_TOO_LARGE:
		case M3TER_REJECTED:
			if (res.status == 404)
				break;			/* the path is wrong, not the rows */
			if (n > 1)
			{
				int			mid = start + n / 2;

				deliver(d, start, mid);
				deliver(d, mid, end);
				return;
			}
			update_rows(d, ROWS_FAILED, start, end, res.status, res.message, 1, 0);
			stats->failed += n;
			stats->error = res.message;
			return;

		case M3TER_TRANSIENT:
			{
				int64		failed = update_rows(d, ROWS_RETRY, start, end, res.status,
												 res.message, 1, res.retry_after_ms);

				stats->failed += failed;
				stats->retried += n - failed;
				stats->error = res.message;
				return;
			}

		case M3TER_FORBIDDEN:
		case M3TER_AUTH_FAILED:
			break;
	}

	/* a configuration problem: keep the rows pending, say why, stop */
	stats->sent -= n;
	stats->stopped = true;
	stats->error = psprintf("%s (HTTP %ld)", res.message ? res.message : "refused", res.status);
	update_rows(d, ROWS_HELD, start, end, res.status, stats->error, 0, 0);
}

/*
 * Claim up to limit due rows with an id above *after and deliver them.
 * Sets *after to the last id claimed, or to 0 after a short claim (the
 * next claim starts over).  Adds to *stats; sets stats->stopped when m3ter
 * refused the credentials or the organization.
 */
void
m3ter_drain_once(int limit, int64 *after, M3terFlushStats *stats)
{
	static SPIPlanPtr claim_plan = NULL;
	Oid			argtypes[2] = {INT4OID, INT8OID};
	Datum		args[2];
	MemoryContext drain_cxt;
	MemoryContext old;
	Drain		d;
	SPITupleTable *tuptable;
	TupleDesc	desc;
	StringInfoData buf;
	int			rc;
	int			i;
	int			start;
	int			claimed;
	int64		last_id = 0;
	int			hold_s = m3ter_catalog_refresh_interval_s > 0 ? m3ter_catalog_refresh_interval_s : 600;

	/* settings first: a missing one raises before anything is claimed */
	(void) m3ter_require_org_id();
	m3ter_require_credentials();
	m3ter_catalog_prepare();

	drain_cxt = AllocSetContextCreate(CurrentMemoryContext, "m3ter drain",
									  ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(drain_cxt);

	args[0] = Int32GetDatum(limit);
	args[1] = Int64GetDatum(*after);
	rc = SPI_execute_plan(keep_plan(&claim_plan, claim_sql, 2, argtypes),
						  args, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "m3ter outbox claim failed: %s", SPI_result_code_string(rc));

	tuptable = SPI_tuptable;
	desc = tuptable->tupdesc;
	memset(&d, 0, sizeof(d));
	d.n = (int) SPI_processed;
	d.stats = stats;
	d.ids = palloc(Max(d.n, 1) * sizeof(int64));
	d.items = palloc(Max(d.n, 1) * sizeof(char *));
	d.lengths = palloc(Max(d.n, 1) * sizeof(int));
	d.path = m3ter_org_path("/measurements");
	initStringInfo(&d.payload);
	initStringInfo(&buf);
	stats->claimed += d.n;

	claimed = d.n;
	d.n = 0;
	for (i = 0; i < claimed; i++)
	{
		HeapTuple	tup = tuptable->vals[i];
		M3terMeasurement m;
		bool		isnull;
		bool		hold;
		const char *why;
		char		ts[40];
		char		ets[40];
		Datum		value;
		int			k;

		d.ids[d.n] = last_id = DatumGetInt64(SPI_getbinval(tup, desc, COL_ID, &isnull));
		m.uid = TextDatumGetCString(SPI_getbinval(tup, desc, COL_UID, &isnull));
		m.meter = TextDatumGetCString(SPI_getbinval(tup, desc, COL_METER, &isnull));
		m.account = TextDatumGetCString(SPI_getbinval(tup, desc, COL_ACCOUNT, &isnull));
		m3ter_format_timestamp(DatumGetTimestampTz(SPI_getbinval(tup, desc, COL_TS, &isnull)),
							   ts, sizeof(ts));
		m.ts = ts;
		value = SPI_getbinval(tup, desc, COL_ETS, &isnull);
		m.ets = NULL;
		if (!isnull)
		{
			m3ter_format_timestamp(DatumGetTimestampTz(value), ets, sizeof(ets));
			m.ets = ets;
		}
		for (k = 0; k < M3TER_NUM_MAPS; k++)
		{
			value = SPI_getbinval(tup, desc, COL_FIRST_MAP + k, &isnull);
			m.maps[k] = isnull ? NULL : DatumGetJsonbP(value);
		}
		/* checks against the synced catalog (catalog.c): fail or hold, not send */
		why = m3ter_catalog_verdict(&m, &hold);
		if (why != NULL)
		{
			update_rows(&d, hold ? ROWS_CHECK_HELD : ROWS_FAILED, d.n, d.n + 1, 0, why,
						hold ? hold_s : 0, 0);
			if (!hold)
			{
				stats->failed++;
				stats->error = pstrdup(why);
			}
			continue;
		}
		resetStringInfo(&buf);
		m3ter_append_measurement(&buf, &m);
		d.items[d.n] = pnstrdup(buf.data, buf.len);
		d.lengths[d.n] = buf.len;
		d.n++;
	}
	SPI_freetuptable(tuptable);
	*after = (claimed == limit) ? last_id : 0;

	/* send them in requests as full as m3ter's limits allow */
	for (start = 0; start < d.n && !stats->stopped;)
	{
		int			end = m3ter_pack_request(d.lengths, start, d.n);

		if (end == start)
		{
			char	   *why = psprintf("the measurement takes %d bytes as JSON; a request to m3ter must stay under %d bytes",
									   d.lengths[start], M3TER_MAX_PAYLOAD_BYTES);

			update_rows(&d, ROWS_FAILED, start, start + 1, 0, why, 0, 0);
			stats->failed++;
			stats->error = why;
			start++;
			continue;
		}
		deliver(&d, start, end);
		start = end;
	}

	MemoryContextSwitchTo(old);
	if (stats->error != NULL)
		stats->error = pstrdup(stats->error);
	MemoryContextDelete(drain_cxt);
}

/* The earliest next_attempt_at of a pending row, or 0 when none is pending */
TimestampTz
m3ter_next_due(void)
{
	bool		isnull;
	Datum		value;
	int			rc;

	rc = SPI_execute("SELECT min(next_attempt_at) FROM m3ter.outbox WHERE status = 'pending'",
					 true, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		return 0;
	value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? 0 : DatumGetTimestampTz(value);
}

/* Delete accepted rows older than the retention, a bounded number at a time */
int64
m3ter_delete_expired(int retention_s)
{
	char	   *sql = psprintf("DELETE FROM m3ter.outbox WHERE id IN ("
							   "SELECT id FROM m3ter.outbox WHERE status = 'accepted' "
							   "AND accepted_at < now() - interval '%d seconds' LIMIT 10000)",
							   retention_s);

	if (SPI_execute(sql, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "m3ter outbox retention delete failed");
	return (int64) SPI_processed;
}

/*
 * m3ter_flush(max_rows int DEFAULT NULL) RETURNS jsonb
 *
 * Drains the due rows (all of them, or max_rows) in the caller's
 * transaction and returns what happened.
 */
Datum
m3ter_flush(PG_FUNCTION_ARGS)
{
	int64		max_rows = PG_ARGISNULL(0) ? PG_INT64_MAX : PG_GETARG_INT32(0);
	M3terFlushStats stats;
	StringInfoData out;
	MemoryContext caller = CurrentMemoryContext;
	int64		after = 0;

	if (max_rows < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_rows must not be negative")));
	memset(&stats, 0, sizeof(stats));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	while (stats.claimed < max_rows && !stats.stopped)
	{
		int64		before = stats.claimed;
		bool		from_start = (after == 0);

		m3ter_drain_once((int) Min((int64) m3ter_batch_rows, max_rows - stats.claimed),
						 &after, &stats);
		if (stats.claimed == before && from_start)
			break;				/* nothing due anywhere */
	}
	m3ter_note_delivery(&stats);
	if (stats.stopped)
		ereport(WARNING,
				(errcode(ERRCODE_M3TER_FORBIDDEN),
				 errmsg("m3ter refused the outbox delivery; sending stopped"),
				 errdetail("%s", stats.error),
				 errhint("Check m3ter.org_id, m3ter.access_key_id, m3ter.api_secret and m3ter.ingest_url. The rows stay pending.")));

	/* the answer must outlive SPI_finish(), which frees the SPI context */
	MemoryContextSwitchTo(caller);
	initStringInfo(&out);
	appendStringInfo(&out,
					 "{\"accepted\":" INT64_FORMAT ",\"failed\":" INT64_FORMAT
					 ",\"retried\":" INT64_FORMAT ",\"requests\":" INT64_FORMAT
					 ",\"stopped\":%s,\"error\":",
					 stats.accepted, stats.failed, stats.retried, stats.requests,
					 stats.stopped ? "true" : "false");
	if (stats.error)
		escape_json(&out, stats.error);
	else
		appendStringInfoString(&out, "null");
	appendStringInfoChar(&out, '}');
	SPI_finish();

	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(out.data)));
}
