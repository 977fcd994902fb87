/*-------------------------------------------------------------------------
 *
 * claim_state.c
 *		Where claims of fresh outbox rows continue: the frontier and the
 *		gaps behind it (m3ter.claim_state).
 *
 * Fresh rows (as inserted) are claimed in id order after the frontier, so
 * no index has to know which rows are pending, and writing a row's outcome
 * is a HOT update.  Ids are handed out by a sequence before the row
 * becomes visible, so a claim can pass an id whose row is still being
 * inserted (or whose transaction will roll back).  Such ids are gaps: each
 * claim reads them again, takes the rows that have appeared and drops
 * their ids.  What is left is settled once no transaction that could have
 * taken one of those ids is still running:
 *
 *	sample	the last id the sequence has given out, then the virtual ids
 *			of every transaction running in this database (their rows
 *			with ids up to it are visible, or never will be, once they
 *			have all ended);
 *	settle	later, when all of those had ended before a claim took its
 *			snapshot and that claim read every gap, the ids up to the
 *			sampled one that it did not find are dropped, and a new
 *			sample is taken.
 *
 * A transaction takes its virtual id when it starts, before it can take a
 * row id, so the sample cannot miss one.  This relies on the sequence's
 * cache being 1 (a cached id can be used long after it was given out);
 * with another cache the gaps are never settled, only read again.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/twophase.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/array.h"
#include "utils/timestamp.h"

#include "outbox/claim_state.h"
#include "ground/compat.h"
#include "ground/spi_util.h"

/* Try to settle gaps at most this often (ms) in a process */
#define SETTLE_INTERVAL_MS 1000

/* A worker with gaps to settle claims again this long after it last tried (ms) */
#define RECHECK_MS 2000

static TimestampTz last_settle = 0;


/* The int8[] column col of the current SPI row, palloc'd; *n its length */
static int64 *
int8_column(int col, int *n)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col, &isnull);
	Datum	   *elems;
	bool	   *nulls;
	int64	   *out;
	int			i;

	*n = 0;
	if (isnull)
		return palloc(sizeof(int64));
	deconstruct_array(DatumGetArrayTypeP(d), INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
					  TYPALIGN_DOUBLE, &elems, &nulls, n);
	out = palloc(Max(*n, 1) * sizeof(int64));
	for (i = 0; i < *n; i++)
		out[i] = DatumGetInt64(elems[i]);
	return out;
}

/* Read the claim state (under the claim lock); memory in the current context */
void
m3ter_claim_state_read(M3terClaimState *s)
{
	bool		isnull;
	int			n_hi;
	Datum		d;
	int64		last;
	int64		seq_seen;
	bool		seq_seen_null;

	memset(s, 0, sizeof(*s));
	/* not read-only: inside one transaction (m3ter_flush()) it sees the last claim's write */
	if (SPI_execute("SELECT frontier, gap_lo, gap_hi, sample_id, sample_vxids, "
					"pg_catalog.pg_sequence_last_value('m3ter.outbox_id_seq'::pg_catalog.regclass), "
					"seq_seen, sweep_from, "
					"CASE WHEN swept_at IS NULL THEN " CppAsString2(M3TER_SWEEP_MAX_ROWS) " "
					"     WHEN swept_at <= pg_catalog.now() - pg_catalog.make_interval(secs => "
					CppAsString2(M3TER_SWEEP_INTERVAL_S) ") "
					"     THEN LEAST(" CppAsString2(M3TER_SWEEP_MAX_ROWS) "::bigint, pg_catalog.ceil("
					"          pg_catalog.date_part('epoch', pg_catalog.now() - swept_at) * "
					CppAsString2(M3TER_SWEEP_ROWS_PER_S) ")::bigint) "
					"     ELSE 0 END "
					"FROM m3ter.claim_state",
					false, 0) != SPI_OK_SELECT || SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("m3ter.claim_state must hold exactly one row"),
				 errhint("Reinstall the extension, or INSERT INTO m3ter.claim_state DEFAULT VALUES.")));
	s->frontier = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	s->gap_lo = int8_column(2, &s->n_gaps);
	s->gap_hi = int8_column(3, &n_hi);
	if (n_hi != s->n_gaps)
		elog(ERROR, "m3ter.claim_state has gap_lo and gap_hi of different lengths");
	s->cap_gaps = Max(s->n_gaps, 1);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull);
	s->sample_id = isnull ? 0 : DatumGetInt64(d);
	s->vxids = int8_column(5, &s->n_vxids);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 6, &isnull);
	last = isnull ? 0 : DatumGetInt64(d);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 7, &seq_seen_null);
	seq_seen = seq_seen_null ? 0 : DatumGetInt64(d);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 8, &isnull);
	s->sweep_from = isnull ? PG_INT64_MIN : DatumGetInt64(d);	/* explicit ids can be 0 or below */
	s->sweep_rows = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 9, &isnull));
	SPI_freetuptable(SPI_tuptable);

	if (seq_seen_null ? (s->frontier > 0 && last < s->frontier) : last < seq_seen)
	{
		/*
		 * The sequence went back (setval; TRUNCATE resets the state itself):
		 * new rows get ids the claims have passed.  Start over from the
		 * first id; the rows still there are passed again, once.  A frontier
		 * past the sequence alone is no sign of it: a row given an explicit
		 * id above the sequence moves the frontier there, and the ids in
		 * between are a gap, read again until the sequence has passed them.
		 */
		s->frontier = 0;
		s->n_gaps = 0;
		s->sample_id = 0;
		s->n_vxids = 0;
		s->changed = true;
		/* answers to requests in flight may be for ids that are new rows' now */
		if (SPI_execute("DELETE FROM m3ter.inflight", false, 0) != SPI_OK_DELETE)
			elog(ERROR, "m3ter in-flight reset failed");
	}
	s->seq_seen = last;
	if (seq_seen_null || last != seq_seen)
		s->changed = true;
}

/* Write the claim state back when it changed */
void
m3ter_claim_state_write(M3terClaimState *s)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[6] = {INT8OID, INT8ARRAYOID, INT8ARRAYOID, INT8OID, INT8ARRAYOID, INT8OID};
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};

	if (!s->changed)
		return;
	values[0] = Int64GetDatum(s->frontier);
	values[1] = m3ter_int8_array(s->gap_lo, s->n_gaps);
	values[2] = m3ter_int8_array(s->gap_hi, s->n_gaps);
	values[3] = Int64GetDatum(s->sample_id);
	nulls[3] = s->sample_id == 0 ? 'n' : ' ';
	values[4] = m3ter_int8_array(s->vxids, s->n_vxids);
	nulls[4] = s->sample_id == 0 ? 'n' : ' ';
	values[5] = Int64GetDatum(s->seq_seen);
	if (SPI_execute_plan(m3ter_keep_plan(&plan, "UPDATE m3ter.claim_state SET frontier = $1, gap_lo = $2, "
										 "gap_hi = $3, sample_id = $4, sample_vxids = $5, seq_seen = $6",
										 6, types),
						 values, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "m3ter claim state update failed");
	s->changed = false;
}

/* Append the gap lo..hi, above every gap there is */
void
m3ter_claim_state_add_gap(M3terClaimState *s, int64 lo, int64 hi)
{
	if (s->n_gaps > 0 && s->gap_hi[s->n_gaps - 1] + 1 >= lo)
	{
		s->gap_hi[s->n_gaps - 1] = Max(s->gap_hi[s->n_gaps - 1], hi);
		s->changed = true;
		return;
	}
	if (s->n_gaps == s->cap_gaps)
	{
		s->cap_gaps *= 2;
		s->gap_lo = repalloc(s->gap_lo, s->cap_gaps * sizeof(int64));
		s->gap_hi = repalloc(s->gap_hi, s->cap_gaps * sizeof(int64));
	}
	s->gap_lo[s->n_gaps] = lo;
	s->gap_hi[s->n_gaps] = hi;
	s->n_gaps++;
	s->changed = true;
}

/*
 * Drop the ids seen[0..n) (ascending) from the gaps: their rows are visible
 * now, so they are no longer gaps.
 */
void
m3ter_claim_state_drop_ids(M3terClaimState *s, const int64 *seen, int n)
{
	int64	   *old_lo = s->gap_lo;
	int64	   *old_hi = s->gap_hi;
	int			old_n = s->n_gaps;
	int			g;
	int			k = 0;

	if (n == 0)
		return;
	s->cap_gaps = old_n + n + 1;
	s->gap_lo = palloc(s->cap_gaps * sizeof(int64));
	s->gap_hi = palloc(s->cap_gaps * sizeof(int64));
	s->n_gaps = 0;
	for (g = 0; g < old_n; g++)
	{
		int64		lo = old_lo[g];

		while (k < n && seen[k] < lo)
			k++;
		for (; k < n && seen[k] <= old_hi[g]; k++)
		{
			if (seen[k] > lo)
				m3ter_claim_state_add_gap(s, lo, seen[k] - 1);
			lo = seen[k] + 1;
		}
		if (lo <= old_hi[g])
			m3ter_claim_state_add_gap(s, lo, old_hi[g]);
	}
	pfree(old_lo);
	pfree(old_hi);
	s->changed = true;
}

/*
 * Have all the sampled transactions ended?  A prepared transaction blocks
 * it too: after a restart it comes back under another virtual id.
 */
static bool
sample_ended(const M3terClaimState *s)
{
	int			i;
	bool		isnull;
	bool		prepared;

	if (max_prepared_xacts > 0)
	{
		if (SPI_execute("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_xacts "
						"WHERE database = pg_catalog.current_database())", true, 0) != SPI_OK_SELECT)
			elog(ERROR, "m3ter prepared transaction lookup failed");
		prepared = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		SPI_freetuptable(SPI_tuptable);
		if (prepared)
			return false;
	}

	for (i = 0; i < s->n_vxids; i++)
	{
		VirtualTransactionId vxid;

		M3TER_VXID_PROC(vxid) = (int32) (s->vxids[i] >> 32);
		vxid.localTransactionId = (LocalTransactionId) (s->vxids[i] & 0xFFFFFFFF);
		if (!VirtualXactLock(vxid, false))
			return false;
	}
	return true;
}

/* Sample the last id given out and the transactions running now */
static void
take_sample(M3terClaimState *s)
{
	bool		isnull;
	Datum		last;
	int64		cache;
	VirtualTransactionId *running;
	int			n;
	int			i;

	if (SPI_execute("SELECT pg_catalog.pg_sequence_last_value(q.seqrelid), q.seqcache "
					"FROM pg_catalog.pg_sequence q "
					"WHERE q.seqrelid = 'm3ter.outbox_id_seq'::pg_catalog.regclass",
					true, 0) != SPI_OK_SELECT || SPI_processed != 1)
		return;
	last = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	cache = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	SPI_freetuptable(SPI_tuptable);
	if (cache != 1)
		return;					/* see the file header: never settled */

	/* only after the id: a transaction that took an id before is listed */
	running = GetCurrentVirtualXIDs(InvalidTransactionId, false, false, PROC_IN_VACUUM, &n);
	s->sample_id = isnull ? 1 : Max(DatumGetInt64(last), 1);
	pfree(s->vxids);
	s->vxids = palloc(Max(n, 1) * sizeof(int64));
	s->n_vxids = n;
	for (i = 0; i < n; i++)
		s->vxids[i] = ((int64) M3TER_VXID_PROC(running[i]) << 32) |
			(int64) running[i].localTransactionId;
	s->changed = true;
}

/*
 * Before a claim opens its cursor: have all the sampled transactions
 * ended?  Checked at most once a second, and only where the cursor will
 * see what they committed (not under a transaction snapshot).  The claim
 * then reads the gaps as usual and, if it read them all, calls
 * m3ter_claim_state_settle() with the answer.
 */
bool
m3ter_claim_state_sample_ended(const M3terClaimState *s)
{
	TimestampTz now = GetCurrentTimestamp();

	if (!TimestampDifferenceExceeds(last_settle, now, SETTLE_INTERVAL_MS))
		return false;
	last_settle = now;
	if (s->sample_id == 0 || IsolationUsesXactSnapshot())
		return false;
	return sample_ended(s);
}

/*
 * After a claim that read every gap: when the sampled transactions had
 * ended before it looked (ended), the ids up to the sample that it did not
 * find can never appear: drop them.  Then sample again while gaps remain.
 */
void
m3ter_claim_state_settle(M3terClaimState *s, bool ended)
{
	int			g;
	int			kept = 0;

	if (ended)
	{
		for (g = 0; g < s->n_gaps; g++)
		{
			if (s->gap_hi[g] <= s->sample_id)
				continue;
			s->gap_lo[kept] = Max(s->gap_lo[g], s->sample_id + 1);
			s->gap_hi[kept] = s->gap_hi[g];
			kept++;
		}
		s->n_gaps = kept;
		s->sample_id = 0;
		s->n_vxids = 0;
		s->changed = true;
	}
	if (s->n_gaps > 0 && s->sample_id == 0)
		take_sample(s);
}

/*
 * When a worker should claim again only to settle the gaps m3ter.claim_state
 * holds (whoever left them): the claims that find new rows read them anyway,
 * but the ids of a rollback are only dropped by a later claim.
 */
TimestampTz
m3ter_claim_state_recheck_at(void)
{
	return TimestampTzPlusMilliseconds(last_settle, RECHECK_MS);
}
