/*-------------------------------------------------------------------------
 *
 * delivery.c
 *		Delivering m3ter.outbox: claims go to the sender, answers come
 *		back as status writes, each in a short transaction of its own.
 *
 * The worker, CALL m3ter.flush() and m3ter_flush() all run this loop
 * (m3ter_delivery_step), differing only in who owns the transaction:
 *
 *	M3TER_TXN_WORKER	the worker: each claim and each batch of outcomes
 *						is a transaction started and committed here;
 *	M3TER_TXN_PROCEDURE	CALL m3ter.flush(): the same, through SPI_commit();
 *	M3TER_TXN_CALLER	m3ter_flush(): everything in the caller's
 *						transaction (it holds the claim lock to its end).
 *
 * A step writes the outcomes of finished requests, claims as many rows as
 * the free requests in flight can carry (m3ter.max_in_flight requests,
 * at most m3ter.batch_rows rows and m3ter.claim_bytes bytes of JSON a
 * claim), and lets the sender start and wait.  Memory is bounded by what
 * is in flight, never by what is pending: a claim's measurements live in
 * its own memory context, freed when its last request is answered.
 *
 * What each answer does to the rows (request.c classifies it):
 *	M3TER_OK			'accepted'
 *	M3TER_REJECTED,		split in halves until the rejected measurements
 *	M3TER_TOO_LARGE		are alone, then 'failed' with m3ter's message
 *	M3TER_TRANSIENT		a 429 for a second or two waits in memory (the pacing
 *						slows down); otherwise 'pending' with attempts + 1 and a growing
 *						delay, 'failed' only once older than
 *						m3ter.give_up_after
 *	M3TER_FORBIDDEN,	(with a fresh token) a configuration fault: rows
 *	M3TER_AUTH_FAILED,	stay 'pending' with the reason noted, no attempt
 *	M3TER_UNEXPECTED	spent, and delivery stops until the next pass
 *
 * A claim that comes up short (a part-full request: rows trickle in) makes
 * the next one wait as long as m3ter's 5-minute budget allows per request
 * on average, 60 ms by default: a steady stream of rows then goes out in
 * fuller requests and never spends the budget early; a lone row after an
 * idle spell still goes at once.
 *
 * Guaranteed progress: when a claim raises (say a row whose JSON cannot
 * be written), the next claims at the same place take half as many rows,
 * down to one; a row that raises alone, or twice as the row being read,
 * is marked 'failed' with the error, and everything else flows.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "outbox/delivery.h"
#include "client/http.h"
#include "client/pacing.h"
#include "client/request.h"
#include "client/sender.h"
#include "client/token.h"
#include "ground/errors.h"
#include "ground/measurement.h"
#include "ground/settings.h"
#include "ground/subscriber.h"
#include "ground/version.h"
#include "outbox/catalog.h"
#include "outbox/claim_state.h"
#include "outbox/outbox.h"

/* One claim: its rows, as a sender group, and its in-flight record */
typedef struct Claim
{
	M3terGroup	group;			/* must be first: sends point to it */
	dlist_node	node;
	int64	   *ids;
	int32	   *attempts;			/* attempts of each row when claimed */
	int			ids_cap;
	int64		record_id;		/* in m3ter.inflight, 0 when none */
} Claim;

/*
 * Where claims raise: kept across deliveries, since an error ends the
 * delivery it happened in.
 */
static struct
{
	bool		in_claim;		/* a claim is being read */
	int64		row_in_hand;	/* the row being read, 0 when none */
	int64		last_error_row; /* the row in hand at the last error */
	int			narrow_rows;	/* claim at most this many rows (0: no limit) */
}			progress;

/* Start or continue the transaction for one unit of work */
static void
begin_work(M3terDelivery *d)
{
	if (d->mode == M3TER_TXN_WORKER)
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		if (!m3ter_lock_extension())
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("extension \"m3ter\" was dropped")));
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
	}
	if (d->mode == M3TER_TXN_PROCEDURE)
	{
		/*
		 * running with the owner's rights: the caller's search_path picks
		 * nothing; and short queries run again and again are not worth
		 * compiling (jit)
		 */
		(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
		(void) set_config_option("jit", "off", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
	}
	if (d->mode != M3TER_TXN_CALLER)
		PushActiveSnapshot(GetTransactionSnapshot());
}

/* Commit one unit of work (the caller's transaction stays open) */
static void
end_work(M3terDelivery *d)
{
	if (d->mode != M3TER_TXN_CALLER)
		PopActiveSnapshot();
	if (d->mode == M3TER_TXN_WORKER)
	{
		SPI_finish();
		CommitTransactionCommand();
	}
	else if (d->mode == M3TER_TXN_PROCEDURE)
		SPI_commit();
}

/* Prepare a delivery; in M3TER_TXN_CALLER and PROCEDURE modes SPI is connected */
void
m3ter_delivery_start(M3terDelivery *d, M3terTxnMode mode, int64 max_rows)
{
	memset(d, 0, sizeof(*d));
	d->mode = mode;
	d->max_rows = max_rows;
	/* a flush takes a waiting row once, when it is due at the call */
	d->due_by = mode == M3TER_TXN_WORKER ? 0 : GetCurrentTimestamp();
	d->cxt = AllocSetContextCreate(TopMemoryContext, "m3ter delivery", ALLOCSET_DEFAULT_SIZES);
	dlist_init(&d->claims);
	d->cursor_due = DT_NOBEGIN;
	d->wrapped = true;
	m3ter_sender_init(&d->sender, m3ter_max_in_flight);
}

/* Free a claim whose sends are all done, dropping its in-flight record */
static void
free_claim(Claim *c)
{
	dlist_delete(&c->node);
	MemoryContextDelete(c->group.cxt);
	pfree(c);
}

/* End a delivery: abandon what is in flight (error paths) and free it all */
void
m3ter_delivery_end(M3terDelivery *d)
{
	dlist_mutable_iter it;

	m3ter_sender_abort(&d->sender);
	dlist_foreach_modify(it, &d->claims)
		free_claim(dlist_container(Claim, node, it.cur));
	m3ter_sender_free(&d->sender);
	MemoryContextDelete(d->cxt);
	d->cxt = NULL;
}

/*
 * Keep msg as the delivery's last error, copied into the delivery's own
 * context: the answer that carried it is freed with its claim.  The same
 * text again keeps the copy (a delivery may meet thousands of 429s).
 */
static void
note_error(M3terDelivery *d, const char *msg)
{
	if (msg == NULL || (d->stats.error != NULL && strcmp(d->stats.error, msg) == 0))
		return;
	d->stats.error = MemoryContextStrdup(d->cxt, msg);
}

/* Put the rows of a finished send back pending for a later attempt */
static void
retry_later(M3terDelivery *d, M3terSend *send)
{
	Claim	   *c = (Claim *) send->group;
	M3terCallResult *r = &send->result;
	int			n = send->end - send->start;
	int64		gave_up = m3ter_outbox_write(M3TER_ROWS_RETRY, c->ids + send->start, n,
											 &(M3terRowOutcome) {.http_status = r->status,
											 .error = r->message, .retry_after_ms = r->retry_after_ms,
											 .throttled = r->status == 429});

	d->stats.failed += gave_up;
	d->stats.retried += n - gave_up;
	if (r->status != 429)
		d->stats.retried_fault += n - gave_up;
	note_error(d, r->message);
	m3ter_sender_finish(&d->sender, send);
}

/* Write what the answer of one finished send means for its rows */
static void
record_outcome(M3terDelivery *d, M3terSend *send)
{
	Claim	   *c = (Claim *) send->group;
	M3terCallResult *r = &send->result;
	M3terFlushStats *st = &d->stats;
	int			n = send->end - send->start;
	const int64 *ids = c->ids + send->start;
	int			i;

	if (c->record_id != 0 && !m3ter_outbox_record_exists(c->record_id))
	{
		/* the outbox was truncated meanwhile: these ids may be other rows now */
		m3ter_sender_finish(&d->sender, send);
		return;
	}
	if (!send->untried)
	{
		st->requests += r->requests;
		st->sent += n;
		for (i = send->start; i < send->end; i++)
			if (c->attempts[i] > 0)
				st->resent++;
	}

	switch (r->outcome)
	{
		case M3TER_OK:
			m3ter_outbox_write(M3TER_ROWS_ACCEPTED, ids, n, &(M3terRowOutcome) {.http_status = r->status});
			st->accepted += n;
			for (i = send->start; i < send->end; i++)
				c->attempts[i]++;
			m3ter_sender_finish(&d->sender, send);
			return;

		case M3TER_REJECTED:
		case M3TER_TOO_LARGE:
			if (n > 1)
			{
				m3ter_sender_split(&d->sender, send);
				return;
			}
			m3ter_outbox_write(M3TER_ROWS_FAILED, ids, n,
							   &(M3terRowOutcome) {.http_status = r->status, .error = r->message,
							   .sent = r->status != 0});
			st->failed += n;
			note_error(d, r->message);
			m3ter_sender_finish(&d->sender, send);
			return;

		case M3TER_TRANSIENT:
			if (r->status == 429)
				st->throttled++;
			if (r->status == 429 && r->throttled && d->mode != M3TER_TXN_CALLER)
			{
				/*
				 * 429s that go on: the cluster's growing wait holds the send, not
				 * the rows (a hold over a second hands them back, due), so they
				 * go as soon as it ends, early too when m3ter admits again.
				 * (m3ter_flush() keeps its three tries: it would wait for good.)
				 */
				m3ter_sender_requeue(&d->sender, send, 0);
				return;
			}
			if (r->status == 429 && send->tries < 3 && r->retry_after_ms <= 2000)
			{
				/* the pacing slowed down: wait a moment in memory, spend no write */
				m3ter_sender_requeue(&d->sender, send, Max(r->retry_after_ms, 1000));
				return;
			}
			retry_later(d, send);
			return;

		case M3TER_FORBIDDEN:
		case M3TER_AUTH_FAILED:
		case M3TER_UNEXPECTED:
			break;
	}

	/* not the rows' fault: keep them pending, say why, spend no attempt */
	if (!send->untried)
		st->sent -= n;
	st->stopped = true;
	st->stop_sqlstate = m3ter_call_sqlstate(r, NULL);
	note_error(d, psprintf("%s (HTTP %ld)", r->message ? r->message : "refused", r->status));
	m3ter_outbox_write(M3TER_ROWS_HELD, ids, n, &(M3terRowOutcome) {.http_status = r->status, .error = st->error});
	m3ter_sender_finish(&d->sender, send);
}

/* Drop the claims whose sends are all finished, with their in-flight records */
static void
release_finished_claims(M3terDelivery *d)
{
	dlist_mutable_iter it;

	dlist_foreach_modify(it, &d->claims)
	{
		Claim	   *c = dlist_container(Claim, node, it.cur);

		if (c->group.outstanding == 0)
		{
			if (c->record_id != 0)
				m3ter_outbox_release(c->record_id);
			free_claim(c);
			d->n_claims--;
		}
	}
}

/*
 * Write the outcomes of all finished sends in one transaction.  Each write
 * takes milliseconds (a full request's is a thousand rows): between them,
 * a request whose pacing slot has come starts, so a batch of answers does
 * not leave a gap in the pace.
 */
static void
write_outcomes(M3terDelivery *d)
{
	M3terSend  *send;

	if (!m3ter_sender_has_done(&d->sender))
		return;
	begin_work(d);
	while ((send = m3ter_sender_next_done(&d->sender)) != NULL)
	{
		record_outcome(d, send);
		if (d->sender.n_queued > 0)
			m3ter_sender_pump(&d->sender, 0);
	}
	release_finished_claims(d);
	end_work(d);
}

/*
 * While the pacer holds every send for over a second (a wait m3ter asked
 * for, 429s that go on, the token endpoint down), hand the rows of the
 * requests not running back to the outbox: due, no attempt spent, out of
 * the claim's in-flight record.  Held in flight, unsent, they would be
 * counted as sent if the sender stopped meanwhile.  Claims start over from
 * the front once ours are done, so they go first after the wait.
 */
static void
hand_back_queued(M3terDelivery *d)
{
	M3terSend  *send;

	begin_work(d);
	while ((send = m3ter_sender_take_queued(&d->sender)) != NULL)
	{
		Claim	   *c = (Claim *) send->group;
		int			n = send->end - send->start;
		const int64 *ids = c->ids + send->start;

		/* (an outbox truncated meanwhile: these ids may be other rows now) */
		if (c->record_id != 0 && m3ter_outbox_record_exists(c->record_id))
		{
			m3ter_outbox_write(M3TER_ROWS_DEFER, ids, n, &(M3terRowOutcome) {0});
			m3ter_outbox_record_drop(c->record_id, ids, n);
		}
		d->stats.claimed -= n;
		m3ter_sender_finish(&d->sender, send);
	}
	release_finished_claims(d);
	end_work(d);
	d->wrap_wanted = true;
}

/* Ids of this delivery's in-flight records (palloc'd) */
static int64 *
live_records(M3terDelivery *d, int *n)
{
	int64	   *ids = palloc((d->n_claims + 1) * sizeof(int64));
	dlist_iter	it;

	*n = 0;
	dlist_foreach(it, &d->claims)
	{
		Claim	   *c = dlist_container(Claim, node, it.cur);

		if (c->record_id != 0)
			ids[(*n)++] = c->record_id;
	}
	return ids;
}

/* Is id among the sorted ids[0..n)? */
static bool
among(const int64 *ids, int n, int64 id)
{
	int			lo = 0,
				hi = n - 1;

	while (lo <= hi)
	{
		int			mid = (lo + hi) / 2;

		if (ids[mid] == id)
			return true;
		if (ids[mid] < id)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return false;
}

static int
cmp_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return x < y ? -1 : x > y ? 1 : 0;
}

/*
 * A row older than m3ter.resend_window is not sent: m3ter keeps a uid for 35
 * days, so if it was accepted once (a restored backup or a point-in-time
 * recovery can make a delivered row pending again) a re-send now would be
 * billed twice.  Returns the reason it fails with, or NULL.
 */
static const char *
too_old_to_send(const M3terOutboxRow *row)
{
	TimestampTz limit = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													-(int64) m3ter_resend_window_s * 1000);

	if (row->created_at >= limit)
		return NULL;
	return psprintf("not sent: created %s, longer ago than m3ter.resend_window (m3ter keeps a uid for 35 days, so a "
					"re-send of a row it once accepted would be billed twice); if it was never sent, release it with "
					"UPDATE m3ter.outbox SET status = 'pending', created_at = now() WHERE id = " INT64_FORMAT,
					timestamptz_to_str(row->created_at), row->id);
}

/* Make room for one more row id in a claim */
static void
grow_claim(Claim *c)
{
	if (c->group.n < c->ids_cap)
		return;
	c->ids_cap *= 2;
	c->ids = repalloc(c->ids, c->ids_cap * sizeof(int64));
	c->attempts = repalloc(c->attempts, c->ids_cap * sizeof(int32));
}

/*
 * One claim as it reads the rows: what it packed so far, where it is in the
 * claim's parts, the ids it read in the gaps
 */
typedef struct ClaimScan
{
	int64		limit;			/* rows to read at most */
	int			max_sends;		/* requests' worth to claim at most */
	int64		read;			/* rows read (consumed) */
	int64		bytes;			/* bytes of the measurements taken */
	int64		send_bytes;		/* the last request, as the sender packs it */
	int			send_items;
	int			sends;
	bool		full;			/* take no more rows */
	M3terClaimState state;
	int64		last_fresh;		/* the last fresh id read */
	int64	   *seen;			/* ids read in the gaps: visible now */
	int			n_seen;
	int			seen_cap;
	bool		ended;			/* the sampled transactions had ended */
	bool		gaps_read;		/* the claim read past every gap */
	StringInfoData buf;			/* the row in hand as JSON */
	MemoryContext row_cxt;
} ClaimScan;

/* The rows one claim may take: requests' worth, batch and delivery limits */
static int64
claim_limit(M3terDelivery *d, int max_requests)
{
	int64		limit = Min((int64) max_requests * M3TER_MAX_MEASUREMENTS, (int64) m3ter_batch_rows);

	if (progress.narrow_rows > 0)
		limit = Min(limit, (int64) progress.narrow_rows);
	if (d->max_rows > 0)
		limit = Min(limit, d->max_rows - d->stats.claimed);
	return limit;
}

/* An empty claim of up to limit rows, in the delivery's context */
static Claim *
new_claim(M3terDelivery *d, int64 limit)
{
	Claim	   *c = MemoryContextAllocZero(d->cxt, sizeof(Claim));

	m3ter_group_init(&c->group, d->cxt, (int) Min(limit, 1024));
	c->ids_cap = (int) Min(limit, 1024);
	c->ids = MemoryContextAlloc(c->group.cxt, c->ids_cap * sizeof(int64));
	c->attempts = MemoryContextAlloc(c->group.cxt, c->ids_cap * sizeof(int32));
	return c;
}

/*
 * Read the row in hand and check it; *verdict is why it is not sent (held
 * when *hold), else scan->buf holds it as JSON.  False when it would open
 * one request more than m3ter.claim_bytes allows (or pass the bytes
 * themselves: rows too large to send): it waits for the next claim, and
 * every request of this one is full.
 */
static bool
take_row(ClaimScan *scan, Claim *c, M3terOutboxRow *row, const char **verdict, bool *hold)
{
	MemoryContext old = MemoryContextSwitchTo(scan->row_cxt);
	int			k = c->group.n;

	m3ter_outbox_read_row(row, &progress.row_in_hand);
	*verdict = too_old_to_send(row);
	if (*verdict == NULL)
		*verdict = m3ter_catalog_verdict(&row->m, hold);
	if (*verdict == NULL)
	{
		resetStringInfo(&scan->buf);
		m3ter_append_measurement(&scan->buf, &row->m);
	}
	MemoryContextSwitchTo(old);

	/* packed as the sender will pack it: the first row counts too */
	if (*verdict == NULL && !m3ter_pack_item(&scan->send_bytes, &scan->send_items, scan->buf.len) && k > 0)
		scan->sends++;
	return !(k > 0 && *verdict == NULL &&
			 (scan->sends > scan->max_sends || scan->bytes + scan->buf.len > (int64) m3ter_claim_bytes));
}

/* The row is consumed: move the claim's position in its part past it */
static void
pass_row(M3terDelivery *d, ClaimScan *scan, const M3terOutboxRow *row, M3terClaimPart part)
{
	scan->read++;
	if (part == M3TER_PART_DEFERRED)
	{
		d->cursor_due = row->due;
		d->cursor_id = row->id;
	}
	else if (part == M3TER_PART_GAP)
	{
		if (scan->n_seen == scan->seen_cap)
		{
			scan->seen_cap *= 2;
			scan->seen = repalloc(scan->seen, scan->seen_cap * sizeof(int64));
		}
		scan->seen[scan->n_seen++] = row->id;
	}
	else
	{
		scan->gaps_read = true;
		if (row->id > scan->last_fresh + 1)
			m3ter_claim_state_add_gap(&scan->state, scan->last_fresh + 1, row->id - 1);
		scan->last_fresh = row->id;
	}
}

/* What becomes of a row read: deferred, held, failed by a check, or claimed */
static void
place_row(M3terDelivery *d, ClaimScan *scan, Claim *c, const M3terOutboxRow *row,
		  M3terRowState rstate, bool theirs, const char *verdict, bool hold)
{
	if (rstate == M3TER_ROW_PASS || theirs)
		;						/* done, deferred, or another sender has it in flight */
	else if (rstate == M3TER_ROW_NOT_DUE)
		m3ter_outbox_write(M3TER_ROWS_DEFER, &row->id, 1, &(M3terRowOutcome) {0});
	else if (verdict != NULL && hold)
		m3ter_outbox_write(M3TER_ROWS_CHECK_HELD, &row->id, 1,
						   &(M3terRowOutcome) {.error = verdict,
						   .hold_s = m3ter_catalog_refresh_interval_s > 0 ? m3ter_catalog_refresh_interval_s : 600});
	else if (verdict != NULL)
	{
		m3ter_outbox_write(M3TER_ROWS_FAILED, &row->id, 1, &(M3terRowOutcome) {.error = verdict});
		d->stats.failed++;
		note_error(d, verdict);
	}
	else
	{
		int			k = c->group.n;

		grow_claim(c);
		m3ter_group_add(&c->group, scan->buf.data, scan->buf.len);
		c->ids[k] = row->id;
		c->attempts[k] = row->attempts;
		scan->bytes += scan->buf.len;
	}
}

/* Read the claim's rows through its cursor until the claim is full or none are left */
static void
scan_rows(M3terDelivery *d, ClaimScan *scan, Claim *c, Portal portal,
		  const int64 *others, int n_others, bool *short_claim)
{
	int			chunk = 64;

	while (!scan->full)
	{
		uint64		i;

		SPI_cursor_fetch(portal, true, (long) Min((int64) chunk, scan->limit - scan->read));
		if (SPI_processed == 0)
		{
			*short_claim = true;
			scan->gaps_read = true;
			break;
		}
		for (i = 0; i < SPI_processed && !scan->full; i++)
		{
			M3terOutboxRow row;
			M3terClaimPart part;
			M3terRowState rstate;
			const char *verdict = NULL;
			bool		hold = false;
			bool		theirs;

			m3ter_outbox_peek_row(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, &row, &part, &rstate);
			theirs = rstate == M3TER_ROW_TAKE && among(others, n_others, row.id);
			if (rstate == M3TER_ROW_TAKE && !theirs && !take_row(scan, c, &row, &verdict, &hold))
			{
				scan->full = true;
				MemoryContextReset(scan->row_cxt);
				break;
			}
			pass_row(d, scan, &row, part);
			place_row(d, scan, c, &row, rstate, theirs, verdict, hold);
			MemoryContextReset(scan->row_cxt);
			if (scan->read >= scan->limit)
				scan->full = true;
		}
		SPI_freetuptable(SPI_tuptable);
		/* read big rows a few at a time */
		if (c->group.n > 0)
			chunk = (int) Max(1, Min(256, (256 * 1024) / Max(scan->bytes / c->group.n, 1)));
	}
}

/* The frontier and gaps after the claim's reading */
static void
settle_claim_state(ClaimScan *scan)
{
	if (scan->last_fresh != scan->state.frontier)
	{
		scan->state.frontier = scan->last_fresh;
		scan->state.changed = true;
	}
	qsort(scan->seen, scan->n_seen, sizeof(int64), cmp_int64);
	m3ter_claim_state_drop_ids(&scan->state, scan->seen, scan->n_seen);
	m3ter_claim_state_settle(&scan->state, scan->ended && scan->gaps_read);
	m3ter_claim_state_write(&scan->state);
}

/*
 * Claim up to max_requests requests' worth of due rows in one transaction
 * and queue them.  Returns the number of rows claimed; sets *short_claim
 * when fewer were due than asked for.  The steps: take the claim lock, clean
 * up stale in-flight records, read the rows through the claim's cursor
 * (scan_rows), record the claimed ones in flight, settle the frontier.
 */
static int
claim(M3terDelivery *d, int max_requests, bool *short_claim)
{
	ClaimScan	scan;
	int			n_live;
	int64	   *live;
	int			n_others;
	int64	   *others;
	Claim	   *c;
	Portal		portal;

	*short_claim = false;
	memset(&scan, 0, sizeof(scan));
	scan.limit = claim_limit(d, max_requests);
	if (scan.limit <= 0)
		return 0;
	scan.max_sends = (int) Min((int64) max_requests,
							   Max((int64) m3ter_claim_bytes / M3TER_MAX_PAYLOAD_BYTES, 1));
	scan.send_bytes = M3TER_PAYLOAD_OVERHEAD;
	scan.sends = 1;

	begin_work(d);
	if (!m3ter_outbox_lock_claims())
	{
		/* an atomic m3ter_flush() is running: try again later */
		end_work(d);
		d->claim_lock_busy = true;
		return 0;
	}
	d->claim_lock_busy = false;
	if (m3ter_outbox_subscription() != NULL)
	{
		/* enabled since the delivery began: the publisher delivers (subscriber.c) */
		end_work(d);
		d->subscribed = true;
		return 0;
	}
	m3ter_catalog_prepare();
	live = live_records(d, &n_live);
	d->stats.orphaned += m3ter_outbox_clean_inflight(live, n_live);
	others = m3ter_outbox_others_inflight(&n_others);
	qsort(others, n_others, sizeof(int64), cmp_int64);

	c = new_claim(d, scan.limit);
	scan.row_cxt = AllocSetContextCreate(CurrentMemoryContext, "m3ter claim row", ALLOCSET_DEFAULT_SIZES);
	initStringInfo(&scan.buf);

	progress.in_claim = true;
	m3ter_claim_state_read(&scan.state);
	(void) m3ter_outbox_sweep(&scan.state);	/* when due: flushes sweep too */
	scan.ended = m3ter_claim_state_sample_ended(&scan.state);	/* before the cursor's snapshot */
	scan.last_fresh = scan.state.frontier;
	scan.seen_cap = Max(scan.state.n_gaps, 1) * 4;
	scan.seen = palloc(scan.seen_cap * sizeof(int64));
	portal = m3ter_outbox_open_claim(d->cursor_due, d->cursor_id, scan.limit, &scan.state, d->due_by);
	scan_rows(d, &scan, c, portal, others, n_others, short_claim);
	SPI_cursor_close(portal);
	progress.in_claim = false;
	progress.row_in_hand = 0;
	MemoryContextDelete(scan.row_cxt);
	pfree(scan.buf.data);

	if (c->group.n > 0)
		c->record_id = m3ter_outbox_record_inflight(c->ids, c->group.n);
	settle_claim_state(&scan);
	end_work(d);

	d->stats.claimed += c->group.n;
	if (progress.narrow_rows > 0 && c->group.n > 0)
	{
		/* a narrowed claim went through: widen again */
		progress.narrow_rows *= 2;
		if (progress.narrow_rows >= M3TER_MAX_MEASUREMENTS)
			progress.narrow_rows = 0;
	}
	if (c->group.n == 0)
	{
		MemoryContextDelete(c->group.cxt);
		pfree(c);
		return 0;
	}
	dlist_push_tail(&d->claims, &c->node);
	d->n_claims++;
	m3ter_sender_queue(&d->sender, &c->group, 0, c->group.n);
	return c->group.n;
}

/*
 * After a claim raised (called on the error path, outside any
 * transaction): narrow the next claims, or fail the row that raised.
 * Returns true when it marked a row failed.
 */
bool
m3ter_delivery_claim_failed(M3terTxnMode mode, const char *message)
{
	int64		culprit = 0;
	M3terDelivery d;

	if (!progress.in_claim)
		return false;
	progress.in_claim = false;
	if (progress.row_in_hand != 0 && progress.row_in_hand == progress.last_error_row)
		culprit = progress.row_in_hand;	/* the same row raised twice */
	else if (progress.narrow_rows == 1 && progress.row_in_hand != 0)
		culprit = progress.row_in_hand;	/* a claim of one row raised */
	progress.last_error_row = progress.row_in_hand;
	progress.row_in_hand = 0;

	if (culprit == 0)
	{
		progress.narrow_rows = progress.narrow_rows > 0 ? Max(progress.narrow_rows / 2, 1) :
			Max(Min(m3ter_batch_rows, M3TER_MAX_MEASUREMENTS) / 2, 1);
		return false;
	}

	memset(&d, 0, sizeof(d));
	d.mode = mode;
	begin_work(&d);
	m3ter_outbox_fail_row(culprit, psprintf("the row could not be sent: %s", message));
	end_work(&d);
	progress.narrow_rows = 0;
	progress.last_error_row = 0;
	return true;
}

/* Let the sender start what is due and collect answers, waiting up to wait_ms */
static void
pump(M3terDelivery *d, int wait_ms)
{
	/* answers are classified (and m3ter's text converted) inside a transaction */
	if (d->mode == M3TER_TXN_WORKER)
		StartTransactionCommand();
	m3ter_sender_pump(&d->sender, m3ter_sender_busy(&d->sender) > 0 ? wait_ms : 0);
	if (d->mode == M3TER_TXN_WORKER)
		CommitTransactionCommand();
}

/*
 * Requests claimed ahead of their pacing slots.  A claim is database work
 * during which no request starts: paced, claims stay small (one or two
 * requests' worth) so that the next slot finds a request ready and is not
 * missed while a large claim runs.  Requests waiting out a 429 or a fault
 * do not count: the slots meanwhile carry new rows.
 */
#define CLAIM_AHEAD 2

/*
 * Of free_requests, those the pacer gives slots for within a second (after
 * the requests already waiting for one).  Rows are claimed only for those:
 * a claim for a slot that the 5-minute budget or a wait m3ter asked for
 * holds for minutes would sit in flight unsent, committed, and a sender
 * stopped meanwhile would count its rows as sent.  Notes in d->held_until when
 * the pacer (or the sender's wait for the token endpoint) holds every claim
 * for over a second.
 */
static int
pacer_allows(M3terDelivery *d, int free_requests)
{
	TimestampTz horizon = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), M3TER_HOLD_HORIZON_MS);
	int			ahead = m3ter_sender_ready(&d->sender);
	bool		backing_off;
	TimestampTz until;

	/*
	 * (m3ter_flush() waits out a wait m3ter asked for, as m3ter_submit()
	 * does: its claims are its transaction's, gone if it is cancelled)
	 */
	d->held_until = m3ter_pace_wait_holds(M3TER_INGEST_API, &backing_off);
	if (d->held_until != 0 && d->mode != M3TER_TXN_CALLER)
		return 0;
	d->held_until = 0;
	/*
	 * The token endpoint failed: the sender asks again after a growing
	 * wait, and before rows are claimed (m3ter_flush()'s claims are its
	 * transaction's: it waits with them)
	 */
	if (d->mode != M3TER_TXN_CALLER &&
		!m3ter_sender_token_ready(&d->sender, free_requests > 0 && m3ter_sender_busy(&d->sender) == 0,
								  &until))
	{
		d->held_until = m3ter_beyond_hold_horizon(until);
		d->next_claim_at = Max(d->next_claim_at, until);	/* a short wait: sleep, no spin */
		return 0;
	}
	if (m3ter_max_requests_per_5min <= 0)
		return free_requests;
	while (free_requests > 0)
	{
		TimestampTz at = m3ter_pace_budget_at(M3TER_INGEST_API, ahead + free_requests - 1);

		if (at <= horizon)
			break;
		if (--free_requests == 0 && ahead == 0)
			d->held_until = at; /* the next slot of all: nothing is claimed */
	}
	return free_requests;
}

/*
 * One step of delivery: write finished outcomes, claim what the free
 * requests in flight can carry, start and wait for up to wait_ms.
 * Returns true while there is more to do now; false once nothing is in
 * flight and nothing more is due (or delivery stopped, or max_rows were
 * claimed).
 */
bool
m3ter_delivery_step(M3terDelivery *d, int wait_ms)
{
	int			free_requests;

	m3ter_exit_if_orphaned();
	write_outcomes(d);
	if (d->sender.n_queued > 0)
		pump(d, 0);				/* what is due starts before the claim below */

	free_requests = d->sender.max_in_flight - m3ter_sender_busy(&d->sender);
	if (m3ter_max_requests_per_second > 0)
		free_requests = Min(free_requests, CLAIM_AHEAD - m3ter_sender_ready(&d->sender));
	free_requests = pacer_allows(d, free_requests);
	if (d->held_until != 0 && d->sender.n_queued > 0 && d->mode != M3TER_TXN_CALLER)
		hand_back_queued(d);
	if (d->next_claim_at > GetCurrentTimestamp() && m3ter_sender_busy(&d->sender) == 0 &&
		d->n_claims == 0)
	{
		/* lingering after a part-full request: let rows gather, sleep meanwhile */
		long		ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), d->next_claim_at);

		m3ter_sleep_ms((int) Min(ms, (long) Max(wait_ms, 1)));
	}
	if (!d->sender.stopped && !d->stats.stopped && !d->subscribed && free_requests > 0 &&
		d->next_claim_at <= GetCurrentTimestamp() &&
		(d->max_rows <= 0 || d->stats.claimed < d->max_rows) &&
		!(d->wrap_wanted && d->n_claims > 0))
	{
		bool		short_claim;
		int			got;

		if (d->wrap_wanted)
		{
			/* nothing of ours in flight: start over from the front */
			d->cursor_due = DT_NOBEGIN;
			d->cursor_id = 0;
			d->wrap_wanted = false;
			d->wrapped = true;
		}
		got = claim(d, free_requests, &short_claim);
		if (d->claim_lock_busy)
			;					/* try again on the next step */
		else if (!short_claim)
			d->wrapped = false;
		else if (d->wrapped && got == 0)
			d->exhausted = true;	/* a pass from the front found nothing */
		else
		{
			d->wrap_wanted = true;
			d->wrapped = false;
		}
		if (short_claim && got > 0 && m3ter_max_requests_per_5min > 0)
		{
			/*
			 * A part-full request: the next claim waits as long as the 5-minute
			 * budget allows per request on average (60 ms by default), so a
			 * steady trickle of rows goes out in fuller requests instead of
			 * spending the budget in minutes.
			 */
			d->next_claim_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														   (int64) m3ter_requests_window_s * 1000 /
														   m3ter_max_requests_per_5min);
		}
		if (got > 0)
			d->exhausted = false;
	}
	if (d->sender.stopped)
	{
		d->stats.stopped = true;
		if (d->stats.stop_sqlstate == 0)
			d->stats.stop_sqlstate = m3ter_call_sqlstate(&d->sender.stop, NULL);
	}

	pump(d, wait_ms);
	write_outcomes(d);

	if (d->stats.error == NULL)
		note_error(d, d->sender.last_error);
	if (m3ter_sender_busy(&d->sender) > 0 || d->n_claims > 0)
		return true;
	if (d->held_until != 0)
		return false;			/* due rows wait for the pacer: the caller rests or returns */
	if (d->stats.stopped || d->subscribed || (d->max_rows > 0 && d->stats.claimed >= d->max_rows))
		return false;
	return !d->exhausted;
}

