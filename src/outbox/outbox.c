/*-------------------------------------------------------------------------
 *
 * outbox.c
 *		The outbox's SQL: claims, in-flight records and status writes.
 *
 * Delivery (delivery.c) runs three kinds of short transactions, each
 * with SPI connected and a snapshot pushed by its caller:
 *
 *	claim		takes the claim lock (a transaction-level advisory lock),
 *				clears in-flight records whose sender is gone, reads due
 *				rows as a keyset walk over the due index and records the
 *				claimed ids in m3ter.inflight;
 *	outcome		writes what m3ter answered for each finished request
 *				(accepted, failed, retry later, held) and drops the
 *				in-flight record of a claim whose requests are all done;
 *	upkeep		retention deletes and the next-due lookup.
 *
 * Why this shape: a row becomes 'accepted' only in a transaction that saw
 * m3ter's 2xx for it, and each answer is committed as soon as it arrives,
 * so a crash, a cancel or a failover re-sends only what was in flight.
 * The in-flight record is what keeps two senders (the worker and a
 * flush) from sending the same row at once; the claim lock serializes
 * claims so each sees every committed record.  A record whose sender is
 * no longer running (crash, failover, a cancelled flush) is stale: the
 * next claim deletes it and counts its rows as sent once (attempts + 1),
 * so their next send shows as a re-send in the statistics.  An atomic
 * m3ter_flush() holds the claim lock to its end, so its uncommitted
 * records need not be seen by anyone.
 *
 * Rows are found without an index on status, so that writing an outcome
 * is a HOT update (see m3ter--1.2.sql).  A claim is one query of three
 * parts, read in this order:
 *
 *	deferred	rows waiting for a retry, held or scheduled (next_attempt_at
 *				> created_at), due now, over the deferred index in the
 *				order they fell due; claims continue after the last row the
 *				previous one took, and start over from the front when a
 *				claim comes up short and nothing of their own is in flight;
 *	gaps		ids passed before their rows were visible (claim_state.c),
 *				range by range over the primary key (LATERAL: the planner
 *				must not walk the whole table to match it against them);
 *	fresh		every row after the frontier, in id order.
 *
 * Every write that leaves a row pending makes it deferred (m3ter.due_now),
 * and every write that ends it takes it out of the deferred index again
 * (next_attempt_at back to created_at), so a pending row is always where
 * the next claims look.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "outbox/outbox.h"
#include "ground/measurement.h"
#include "ground/settings.h"
#include "ground/spi_util.h"
#include "outbox/claim_state.h"

/* Columns of the claim query, 1-based as SPI numbers them */
#define COL_PART		1
#define COL_STATE		2
#define COL_ID			3
#define COL_UID			4
#define COL_METER		5
#define COL_ACCOUNT		6
#define COL_TS			7
#define COL_ETS			8
#define COL_FIRST_MAP	9
#define COL_ATTEMPTS	(COL_FIRST_MAP + M3TER_NUM_MAPS)
#define COL_DUE			(COL_ATTEMPTS + 1)
#define COL_CREATED		(COL_DUE + 1)
#define N_COLS			COL_CREATED

/* The advisory lock that serializes claims: ('m3tr', 1) */
#define CLAIM_LOCK_SQL "SELECT pg_catalog.pg_try_advisory_xact_lock(1831040114, 1)"

#define ROW_COLUMNS "id, uid, meter, account, ts, ets, measure, cost, income, who, \"where\", what, " \
	"other, metadata, attempts, next_attempt_at, created_at"

/* M3terRowState of a row of the gap and fresh parts ($7 is the time now, not
 * the transaction's start: m3ter_flush() may run in a long transaction) */
#define ROW_STATE "CASE WHEN status <> 'pending' OR next_attempt_at > created_at THEN 1 " \
	"WHEN next_attempt_at > $7 THEN 2 ELSE 0 END"

static const char claim_sql[] =
"(SELECT 1 AS part, 0 AS state, " ROW_COLUMNS " FROM m3ter.outbox "
"  WHERE next_attempt_at > created_at AND status = 'pending' AND next_attempt_at <= $8 "
"    AND (next_attempt_at, id) > ($1, $2) "
"  ORDER BY next_attempt_at, id LIMIT $3) "
"UNION ALL "
"(SELECT 2, r.* "
"   FROM ROWS FROM (pg_catalog.unnest($4::pg_catalog.int8[]), pg_catalog.unnest($5::pg_catalog.int8[])) AS g(lo, hi) "
"   CROSS JOIN LATERAL (SELECT " ROW_STATE ", " ROW_COLUMNS " FROM m3ter.outbox "
"                        WHERE id BETWEEN g.lo AND g.hi ORDER BY id LIMIT $3) r "
"  LIMIT $3) "
"UNION ALL "
"(SELECT 3, " ROW_STATE ", " ROW_COLUMNS " FROM m3ter.outbox WHERE id > $6 ORDER BY id LIMIT $3) "
"LIMIT $3";

/*
 * Records of senders that are no longer running; their rows count as sent
 * once.  This runs at every claim and nearly always finds none: the EXISTS
 * becomes a one-time filter, so the UPDATE reads no row then, whatever plan
 * the table's size and statistics give it (a join with the CTE was planned
 * as a merge join, or a scan of the whole outbox, at every claim).
 */
static const char clean_sql[] =
"WITH stale AS ("
" DELETE FROM m3ter.inflight f"
" WHERE (f.owner_pid = pg_catalog.pg_backend_pid() AND f.owner_start = $1 AND f.id <> ALL ($2))"
"    OR (f.owner_pid <> pg_catalog.pg_backend_pid() AND NOT EXISTS ("
"        SELECT 1 FROM pg_catalog.pg_stat_activity a"
"         WHERE a.pid = f.owner_pid AND a.backend_start = f.owner_start"
"           AND a.state IN ('active', 'disabled')))"
" RETURNING f.ids) "
"UPDATE m3ter.outbox o SET attempts = o.attempts + 1, next_attempt_at = m3ter.due_now(o.created_at), "
"       error = 'sent without an answer before its sender stopped; it goes again with the same uid' "
"  WHERE EXISTS (SELECT 1 FROM stale) "
"    AND o.id = ANY (ARRAY(SELECT pg_catalog.unnest(s.ids) FROM stale s)) AND o.status = 'pending'";

static const char others_sql[] =
"SELECT pg_catalog.unnest(ids) FROM m3ter.inflight WHERE NOT (owner_pid = pg_catalog.pg_backend_pid() AND owner_start = $1)";

static const char record_sql[] =
"INSERT INTO m3ter.inflight (owner_pid, owner_start, ids) "
"VALUES (pg_catalog.pg_backend_pid(), $1, $2) RETURNING id";

static const char release_sql[] =
"DELETE FROM m3ter.inflight WHERE id = $1";

static const char record_drop_sql[] =
"UPDATE m3ter.inflight SET ids = ARRAY(SELECT i FROM pg_catalog.unnest(ids) i WHERE i <> ALL ($2)) "
"WHERE id = $1";

static const char record_exists_sql[] =
"SELECT EXISTS (SELECT 1 FROM m3ter.inflight WHERE id = $1)";

static const char accepted_sql[] =
"UPDATE m3ter.outbox SET status = 'accepted', attempts = attempts + 1, "
"http_status = $2, error = NULL, sent_at = clock_timestamp(), accepted_at = clock_timestamp(), "
"next_attempt_at = LEAST(next_attempt_at, created_at) "
"WHERE id = ANY($1) AND status = 'pending'";

static const char failed_sql[] =
"UPDATE m3ter.outbox SET status = 'failed', attempts = attempts + $4, "
"http_status = $2, error = $3, sent_at = CASE WHEN $4 > 0 THEN clock_timestamp() ELSE sent_at END, "
"next_attempt_at = LEAST(next_attempt_at, created_at) "
"WHERE id = ANY($1) AND status = 'pending'";

/*
 * A transient fault: attempts + 1 and a growing delay (1 s, 3 s, 9 s, ...,
 * capped; $6 is a floor such as Retry-After), or 'failed' once the row is
 * older than m3ter.give_up_after (or m3ter.max_attempts is reached).  A
 * 429 ($8) spends no attempt and waits 1 s: m3ter did not look at the rows,
 * and the pacing, not the row, answers for it; only the age gives up on it.
 */
#define GIVE_UP "(created_at < pg_catalog.now() - pg_catalog.make_interval(secs => $4) " \
	"OR ($5 > 0 AND NOT $8 AND attempts + 1 >= $5))"

static const char retry_sql[] =
"WITH u AS (UPDATE m3ter.outbox SET attempts = attempts + CASE WHEN $8 THEN 0 ELSE 1 END, "
"http_status = $2, sent_at = clock_timestamp(), "
"status = CASE WHEN " GIVE_UP " THEN 'failed' ELSE 'pending' END, "
"error = CASE WHEN NOT " GIVE_UP " THEN $3 "
"  WHEN $8 THEN 'gave up: still throttled after m3ter.give_up_after: ' || $3 "
"  ELSE 'gave up after ' || (attempts + 1) || ' attempts: ' || $3 END, "
"next_attempt_at = CASE WHEN " GIVE_UP " THEN LEAST(next_attempt_at, created_at) ELSE "
"  GREATEST(created_at + interval '1 microsecond', $9 + pg_catalog.make_interval(secs => "
"    GREATEST($6, LEAST($7, CASE WHEN $8 THEN 1 ELSE pg_catalog.power(3, LEAST(attempts, 40)) END)))) END "
"WHERE id = ANY($1) AND status = 'pending' RETURNING status) "
"SELECT count(*) FILTER (WHERE status = 'failed') FROM u";

static const char held_sql[] =
"UPDATE m3ter.outbox SET http_status = $2, error = $3, next_attempt_at = m3ter.due_now(created_at) "
"WHERE id = ANY($1) AND status = 'pending'";

/* Held by a check before sending (catalog.c): pending, tried again in $4 seconds */
static const char check_held_sql[] =
"UPDATE m3ter.outbox SET error = $3, next_attempt_at = GREATEST(created_at + interval '1 microsecond', "
"  clock_timestamp() + pg_catalog.make_interval(secs => $4)) "
"WHERE id = ANY($1) AND status = 'pending'";

/* Fresh but not due yet (a created_at in the future): wait among the deferred */
static const char defer_sql[] =
"UPDATE m3ter.outbox SET next_attempt_at = GREATEST(next_attempt_at, created_at + interval '1 microsecond') "
"WHERE id = ANY($1) AND status = 'pending'";

static const char fail_one_sql[] =
"UPDATE m3ter.outbox SET status = 'failed', http_status = NULL, error = $2, "
"next_attempt_at = LEAST(next_attempt_at, created_at) "
"WHERE id = $1 AND status = 'pending'";

/*
 * Take the claim lock for this transaction; false when another sender
 * holds it (an atomic m3ter_flush() holds it to its end).
 */
bool
m3ter_outbox_lock_claims(void)
{
	bool		isnull;
	bool		got;

	if (SPI_execute(CLAIM_LOCK_SQL, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "m3ter claim lock query failed");
	got = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_freetuptable(SPI_tuptable);
	return got;
}

/*
 * Run sql (its plan kept in *plan) with $1 = first, of type first_type, and
 * $2 = ids[0..n) as an int8[]; returns the rows it processed
 */
static int64
execute_with_ids(SPIPlanPtr *plan, const char *sql, Oid first_type, Datum first, const int64 *ids, int n)
{
	Oid			types[2] = {first_type, INT8ARRAYOID};
	Datum		values[2];

	values[0] = first;
	values[1] = m3ter_int8_array(ids, n);
	if (SPI_execute_plan(m3ter_keep_plan(plan, sql, 2, types), values, NULL, false, 0) < 0)
		elog(ERROR, "m3ter in-flight update failed");
	return (int64) SPI_processed;
}

/*
 * Delete stale in-flight records (see the file header); live_ids are this
 * process's records still in use.  Returns the rows counted as sent once.
 */
int64
m3ter_outbox_clean_inflight(const int64 *live_ids, int n_live)
{
	static SPIPlanPtr plan = NULL;

	return execute_with_ids(&plan, clean_sql, TIMESTAMPTZOID, TimestampTzGetDatum(MyStartTimestamp),
							live_ids, n_live);
}

/* Row ids that other senders have in flight now (palloc'd; *n their number) */
int64 *
m3ter_outbox_others_inflight(int *n)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[1] = {TIMESTAMPTZOID};
	Datum		values[1];
	int64	   *ids;
	uint64		i;

	values[0] = TimestampTzGetDatum(MyStartTimestamp);
	if (SPI_execute_plan(m3ter_keep_plan(&plan, others_sql, 1, types), values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "m3ter in-flight lookup failed");
	*n = (int) SPI_processed;
	ids = palloc(Max(*n, 1) * sizeof(int64));
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		ids[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
	return ids;
}

/*
 * Open a cursor over up to limit rows: the deferred ones due after the
 * keyset position (and by due_by, when not 0), then the gaps and the rows
 * after the frontier of state
 */
Portal
m3ter_outbox_open_claim(TimestampTz after_due, int64 after_id, int64 limit,
						const M3terClaimState *state, TimestampTz due_by)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[8] = {TIMESTAMPTZOID, INT8OID, INT8OID, INT8ARRAYOID, INT8ARRAYOID, INT8OID,
	TIMESTAMPTZOID, TIMESTAMPTZOID};
	Datum		values[8];
	TimestampTz now = GetCurrentTimestamp();
	Portal		portal;

	values[0] = TimestampTzGetDatum(after_due);
	values[1] = Int64GetDatum(after_id);
	values[2] = Int64GetDatum(limit);
	values[3] = m3ter_int8_array(state->gap_lo, state->n_gaps);
	values[4] = m3ter_int8_array(state->gap_hi, state->n_gaps);
	values[5] = Int64GetDatum(state->frontier);
	values[6] = TimestampTzGetDatum(now);
	values[7] = TimestampTzGetDatum(due_by != 0 ? due_by : now);
	portal = SPI_cursor_open(NULL, m3ter_keep_plan(&plan, claim_sql, 8, types), values, NULL, false);
	if (portal == NULL)
		elog(ERROR, "m3ter outbox claim failed: %s", SPI_result_code_string(SPI_result));
	return portal;
}

/* The claim query's row in hand, deformed once (SPI_getbinval would walk it per column) */
static Datum row_values[N_COLS];
static bool row_nulls[N_COLS];

/*
 * Take the next row of the claim query: its id and due time into *row,
 * the part it came from and what to do with it.
 */
void
m3ter_outbox_peek_row(HeapTuple tup, TupleDesc desc, M3terOutboxRow *row, M3terClaimPart *part,
					  M3terRowState *state)
{
	if (desc->natts != N_COLS)
		elog(ERROR, "m3ter claim query returned %d columns, not %d", desc->natts, N_COLS);
	heap_deform_tuple(tup, desc, row_values, row_nulls);
	*part = (M3terClaimPart) DatumGetInt32(row_values[COL_PART - 1]);
	*state = (M3terRowState) DatumGetInt32(row_values[COL_STATE - 1]);
	row->id = DatumGetInt64(row_values[COL_ID - 1]);
	row->due = DatumGetTimestampTz(row_values[COL_DUE - 1]);
	row->created_at = DatumGetTimestampTz(row_values[COL_CREATED - 1]);
}

/*
 * Read the rest of the row in hand (m3ter_outbox_peek_row) into *row; the
 * strings and maps are palloc'd in the current context.  *reading gets
 * the row's id first, so an error while reading it can name the row.
 */
void
m3ter_outbox_read_row(M3terOutboxRow *row, int64 *reading)
{
	M3terMeasurement *m = &row->m;

	*reading = row->id;			/* known before anything else can raise */
	row->attempts = DatumGetInt32(row_values[COL_ATTEMPTS - 1]);
	StaticAssertStmt(COL_FIRST_MAP + M3TER_NUM_MAPS - COL_UID == M3TER_NUM_FIELDS,
					 "the claim's columns from uid are a measurement's fields");
	m3ter_measurement_from_datums(m, &row_values[COL_UID - 1], &row_nulls[COL_UID - 1], row->ts, row->ets);
#ifdef M3TER_TEST_HOOKS
	if (m3ter_test_fault_uid[0] != '\0' && strcmp(m->uid, m3ter_test_fault_uid) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("the outbox row \"%s\" cannot be written as JSON", m->uid),
				 errdetail("m3ter.test_fault_uid names it.")));
#endif
}

/* Record a claim's ids as in flight; returns the record's id */
int64
m3ter_outbox_record_inflight(const int64 *ids, int n)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[2] = {TIMESTAMPTZOID, INT8ARRAYOID};
	Datum		values[2];
	bool		isnull;
	int64		id;

	values[0] = TimestampTzGetDatum(MyStartTimestamp);
	values[1] = m3ter_int8_array(ids, n);
	if (SPI_execute_plan(m3ter_keep_plan(&plan, record_sql, 2, types), values, NULL, false, 1) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "m3ter in-flight record failed");
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_freetuptable(SPI_tuptable);
	return id;
}

/* Drop a claim's in-flight record: all its requests are answered */
void
m3ter_outbox_release(int64 record_id)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[1] = {INT8OID};
	Datum		values[1];

	values[0] = Int64GetDatum(record_id);
	if (SPI_execute_plan(m3ter_keep_plan(&plan, release_sql, 1, types), values, NULL, false, 0) < 0)
		elog(ERROR, "m3ter in-flight release failed");
}

/* Take ids[0..n) out of a claim's in-flight record: they were handed back unsent */
void
m3ter_outbox_record_drop(int64 record_id, const int64 *ids, int n)
{
	static SPIPlanPtr plan = NULL;

	(void) execute_with_ids(&plan, record_drop_sql, INT8OID, Int64GetDatum(record_id), ids, n);
}

/*
 * Is a claim's in-flight record still there?  A TRUNCATE of the outbox, or
 * claims starting over after the id sequence went back, delete the records:
 * the ids they hold may belong to other rows by the time m3ter answers.
 */
bool
m3ter_outbox_record_exists(int64 record_id)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[1] = {INT8OID};
	Datum		values[1];
	bool		isnull;
	bool		exists;

	values[0] = Int64GetDatum(record_id);
	if (SPI_execute_plan(m3ter_keep_plan(&plan, record_exists_sql, 1, types), values, NULL, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "m3ter in-flight lookup failed");
	exists = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_freetuptable(SPI_tuptable);
	return exists;
}

/*
 * Write an outcome for rows ids[0..n).  For M3TER_ROWS_RETRY returns how
 * many rows gave up and became 'failed'.
 */
int64
m3ter_outbox_write(M3terRowUpdate which, const int64 *ids, int n, const M3terRowOutcome *outcome)
{
	static SPIPlanPtr plans[6];
	static const char *const sqls[6] = {accepted_sql, failed_sql, retry_sql, held_sql, check_held_sql,
	defer_sql};
	static const int nargs[6] = {2, 4, 9, 3, 4, 1};
	Oid			types[9] = {INT8ARRAYOID, INT4OID, TEXTOID, FLOAT8OID, INT4OID, FLOAT8OID, FLOAT8OID, BOOLOID,
	TIMESTAMPTZOID};
	Datum		values[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	int64		result = 0;
	int			rc;

	if (which == M3TER_ROWS_FAILED)
		types[3] = INT4OID;
	values[0] = m3ter_int8_array(ids, n);
	values[1] = Int32GetDatum((int32) outcome->http_status);
	nulls[1] = outcome->http_status == 0 ? 'n' : ' ';
	values[2] = outcome->error ? CStringGetTextDatum(outcome->error) : (Datum) 0;
	nulls[2] = outcome->error ? ' ' : 'n';
	if (which == M3TER_ROWS_FAILED)
		values[3] = Int32GetDatum(outcome->sent ? 1 : 0);
	else if (which == M3TER_ROWS_CHECK_HELD)
		values[3] = Float8GetDatum((double) outcome->hold_s);
	else
		values[3] = Float8GetDatum(m3ter_give_up_after_s);
	values[4] = Int32GetDatum(m3ter_max_attempts);
	values[5] = Float8GetDatum(Max(outcome->retry_after_ms, 0) / 1000.0);
	values[6] = Float8GetDatum(m3ter_retry_max_delay_ms / 1000.0);
	values[7] = BoolGetDatum(outcome->throttled);
	values[8] = TimestampTzGetDatum(GetCurrentTimestamp());	/* one time for all the rows */

	rc = m3ter_execute_by_key(&plans[which], sqls[which], nargs[which], types, values, nulls);
	if (rc < 0)
		elog(ERROR, "m3ter outbox update failed: %s", SPI_result_code_string(rc));
	if (which == M3TER_ROWS_RETRY && SPI_processed == 1)
	{
		bool		isnull;

		result = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 1, &isnull));
	}
	if (SPI_tuptable)
		SPI_freetuptable(SPI_tuptable);
	return result;
}

/* Mark one row failed without sending it (it cannot be sent) */
void
m3ter_outbox_fail_row(int64 id, const char *why)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		values[2];

	values[0] = Int64GetDatum(id);
	values[1] = CStringGetTextDatum(why);
	if (m3ter_execute_by_key(&plan, fail_one_sql, 2, types, values, NULL) < 0)
		elog(ERROR, "m3ter outbox update failed");
}

/*
 * When the next pending row that no sender has in flight falls due, or 0
 * when none is pending: now when rows wait after the frontier (or the id
 * sequence was set back behind it), the first
 * deferred row's time, or when gaps are to be read again.  Rows after the
 * frontier are found by max(id), one step down the primary key: an EXISTS
 * may be planned as a scan that reads every row delivered before it.
 */
TimestampTz
m3ter_outbox_next_due(void)
{
	bool		isnull;
	Datum		value;
	int			rc;
	TimestampTz due;
	TimestampTz recheck;

	rc = SPI_execute("SELECT LEAST("
					 " (SELECT o.next_attempt_at FROM m3ter.outbox o"
					 "   WHERE o.next_attempt_at > o.created_at AND o.status = 'pending'"
					 "     AND NOT EXISTS (SELECT 1 FROM m3ter.inflight f WHERE o.id = ANY (f.ids))"
					 "   ORDER BY o.next_attempt_at, o.id LIMIT 1),"
					 " (SELECT pg_catalog.now() FROM m3ter.claim_state s"
					 "   WHERE coalesce((SELECT pg_catalog.max(o.id) FROM m3ter.outbox o), 0) > s.frontier"
					 "      OR coalesce(pg_catalog.pg_sequence_last_value('m3ter.outbox_id_seq'::pg_catalog.regclass), 0)"
					 "         < s.frontier)),"
					 " (SELECT s.gap_lo <> '{}' OR s.sample_id IS NOT NULL FROM m3ter.claim_state s)",
					 true, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		return 0;
	value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	due = isnull ? 0 : DatumGetTimestampTz(value);
	value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	if (!isnull && DatumGetBool(value))
	{
		recheck = m3ter_claim_state_recheck_at();
		if (due == 0 || recheck < due)
			due = recheck;
	}
	return due;
}

/*
 * The delete triggers add a row to m3ter.retention_state for each statement
 * that deleted accepted rows; the mark is the latest.  Drop the others,
 * passing over rows another transaction holds (it never waits).
 */
static void
drop_marks_under_latest(void)
{
	if (SPI_execute("DELETE FROM m3ter.retention_state WHERE ctid IN ("
					" SELECT ctid FROM m3ter.retention_state"
					"  WHERE deleted_ts_max < (SELECT max(deleted_ts_max) FROM m3ter.retention_state)"
					"    FOR UPDATE SKIP LOCKED)", false, 0) != SPI_OK_DELETE)
		elog(ERROR, "m3ter retention_state cleanup failed");
}

/*
 * Delete accepted rows older than the retention, walking the table by id
 * 10,000 rows at a time from where the last call stopped (no index knows
 * which rows are accepted).  Returns true while older rows follow; after
 * the last of them the next call starts over from the first row, so rows
 * accepted late (after retries) are found on the next pass.  The outbox's
 * delete triggers keep the latest ts deleted (outbox_deletes.c).
 */
bool
m3ter_outbox_delete_expired(int retention_s)
{
	static SPIPlanPtr plan = NULL;
	static int64 position = 0;
	Oid			types[2] = {FLOAT8OID, INT8OID};
	Datum		values[2];
	bool		isnull;
	bool		none_old;
	int64		scanned;
	Datum		last_old;
	bool		all_old;

	values[0] = Float8GetDatum((double) retention_s);
	values[1] = Int64GetDatum(position);
	if (SPI_execute_plan(m3ter_keep_plan(&plan,
								   "WITH chunk AS ("
								   " SELECT id, created_at < pg_catalog.now() - pg_catalog.make_interval(secs => $1) AS old"
								   "   FROM m3ter.outbox WHERE id > $2 ORDER BY id LIMIT 10000), "
								   "gone AS ("
								   " DELETE FROM m3ter.outbox o USING chunk c"
								   "  WHERE o.id = c.id AND o.status = 'accepted'"
								   "    AND o.accepted_at < pg_catalog.now() - pg_catalog.make_interval(secs => $1)"
								   " RETURNING o.id) "
								   "SELECT (SELECT count(*) FROM chunk), (SELECT max(id) FROM chunk WHERE old),"
								   "       (SELECT coalesce(bool_and(old), false) FROM chunk), (SELECT count(*) FROM gone)",
								   2, types),
						 values, NULL, false, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "m3ter outbox retention delete failed");
	scanned = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	last_old = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &none_old);
	all_old = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	SPI_freetuptable(SPI_tuptable);
	if (scanned > 0 && all_old && !none_old)
	{
		position = DatumGetInt64(last_old);
		return true;
	}
	position = 0;
	drop_marks_under_latest();
	return false;
}

/*
 * The safety net behind the frontier: walk the rows up to it by id, from
 * where the last sweep stopped, and make every fresh pending row that no
 * claim has in flight or will read again (a row given an explicit id below
 * the frontier, say) deferred, so that claims send it.  Each claim calls
 * it with the claim state it read, so flushes sweep as the worker does;
 * it does nothing until the sweep is due (s->sweep_rows, see
 * M3TER_SWEEP_INTERVAL_S), and records where the next one goes on.  Call
 * with the claim lock held.  Returns the rows it found.
 */
int64
m3ter_outbox_sweep(M3terClaimState *s)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[5] = {INT8OID, INT8OID, INT8OID, INT8ARRAYOID, INT8ARRAYOID};
	Datum		values[5];
	bool		isnull;
	int64		found;

	if (s->sweep_rows <= 0)
		return 0;
	values[0] = Int64GetDatum(s->sweep_from);
	values[1] = Int64GetDatum(s->frontier);
	values[2] = Int64GetDatum(s->sweep_rows);
	values[3] = m3ter_int8_array(s->gap_lo, s->n_gaps);
	values[4] = m3ter_int8_array(s->gap_hi, s->n_gaps);
	/* every step by the primary key, whatever the planner thinks of the sizes */
	if (SPI_execute_plan(m3ter_keep_plan(&plan,
								   "WITH chunk AS MATERIALIZED ("
								   " SELECT o.id, o.status = 'pending' AND o.next_attempt_at <= o.created_at AS fresh"
								   "   FROM m3ter.outbox o WHERE o.id > $1 AND o.id <= $2 ORDER BY o.id LIMIT $3), "
								   "lost AS ("
								   " SELECT pg_catalog.array_agg(c.id) AS ids FROM chunk c WHERE c.fresh"
								   "    AND c.id NOT IN (SELECT pg_catalog.unnest(f.ids) FROM m3ter.inflight f)"
								   "    AND NOT EXISTS (SELECT 1 FROM ROWS FROM (pg_catalog.unnest($4), pg_catalog.unnest($5))"
								   "                    AS g(lo, hi) WHERE c.id BETWEEN g.lo AND g.hi)), "
								   "found AS ("
								   " UPDATE m3ter.outbox o SET next_attempt_at = m3ter.due_now(o.created_at)"
								   "  WHERE o.id = ANY ((SELECT ids FROM lost)::bigint[]) AND o.status = 'pending'"
								   "    AND o.next_attempt_at <= o.created_at RETURNING o.id), "
								   /* the next sweep goes on after this one, or from the start (runs unreferenced) */
								   "moved AS ("
								   " UPDATE m3ter.claim_state SET swept_at = pg_catalog.now(),"
								   "        sweep_from = CASE WHEN (SELECT count(*) FROM chunk) < $3 THEN NULL"
								   "                          ELSE (SELECT max(id) FROM chunk) END) "
								   "SELECT count(*) FROM found",
								   5, types),
						 values, NULL, false, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "m3ter outbox sweep failed");
	found = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_freetuptable(SPI_tuptable);
	s->sweep_rows = 0;
	if (found > 0)
		ereport(WARNING,
				(errmsg("m3ter found " INT64_FORMAT " pending outbox rows behind the claims' frontier; they go now", found),
				 errdetail("Rows inserted with an explicit id (OVERRIDING SYSTEM VALUE) or after the id sequence was set back, and rows a restored backup brings back pending, are not in the claims' way."),
				 errhint("Nothing is lost: they are sent now. If the application gives ids itself, let m3ter.outbox give them from its sequence.")));
	return found;
}
