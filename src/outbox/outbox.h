/*-------------------------------------------------------------------------
 *
 * outbox.h
 *		The outbox's SQL: claims, in-flight records, status writes (outbox.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_OUTBOX_OUTBOX_H
#define M3TER_OUTBOX_OUTBOX_H

#include "access/htup.h"
#include "access/tupdesc.h"
#include "utils/portal.h"
#include "ground/measurement.h"
#include "outbox/claim_state.h"

typedef enum M3terRowUpdate
{
	M3TER_ROWS_ACCEPTED,		/* m3ter accepted them */
	M3TER_ROWS_FAILED,			/* never to be sent again */
	M3TER_ROWS_RETRY,			/* a transient fault: try later, or give up */
	M3TER_ROWS_HELD,			/* not their fault: note it, keep them pending */
	M3TER_ROWS_CHECK_HELD,		/* held by a check before sending: pending, later */
	M3TER_ROWS_DEFER			/* not due yet: wait in the deferred index */
} M3terRowUpdate;

/* Where a claimed row came from (the claim query's parts) */
typedef enum M3terClaimPart
{
	M3TER_PART_DEFERRED = 1,	/* due after a retry, a hold or a schedule */
	M3TER_PART_GAP = 2,			/* an id passed before its row was visible */
	M3TER_PART_FRESH = 3		/* after the frontier */
} M3terClaimPart;

/* What a claim may do with a row it read */
typedef enum M3terRowState
{
	M3TER_ROW_TAKE = 0,			/* pending and due: send it */
	M3TER_ROW_PASS = 1,			/* done, or deferred (the other part has it) */
	M3TER_ROW_NOT_DUE = 2		/* fresh but not due yet: defer it */
} M3terRowState;

/* One claimed row */
typedef struct M3terOutboxRow
{
	int64		id;
	int32		attempts;
	TimestampTz due;
	TimestampTz created_at;
	M3terMeasurement m;
	char		ts[M3TER_TIMESTAMP_LEN];
	char		ets[M3TER_TIMESTAMP_LEN];
} M3terOutboxRow;

/* What m3ter_outbox_write() writes besides the rows' new state */
typedef struct M3terRowOutcome
{
	long		http_status;	/* m3ter's answer, 0: none */
	const char *error;			/* why, or NULL */
	bool		sent;			/* failed rows: a request carried them */
	int			hold_s;			/* held rows: seconds before they are looked at again */
	int			retry_after_ms; /* retried rows: m3ter's Retry-After */
	bool		throttled;		/* retried rows: the answer was a 429 */
} M3terRowOutcome;

extern bool m3ter_outbox_lock_claims(void);
extern int64 m3ter_outbox_clean_inflight(const int64 *live_ids, int n_live);
extern int64 *m3ter_outbox_others_inflight(int *n);
extern Portal m3ter_outbox_open_claim(TimestampTz after_due, int64 after_id, int64 limit,
									  const struct M3terClaimState *state, TimestampTz due_by);
extern void m3ter_outbox_peek_row(HeapTuple tup, TupleDesc desc, M3terOutboxRow *row,
								  M3terClaimPart *part, M3terRowState *state);
extern void m3ter_outbox_read_row(M3terOutboxRow *row, int64 *reading);
extern int64 m3ter_outbox_record_inflight(const int64 *ids, int n);
extern void m3ter_outbox_release(int64 record_id);
extern void m3ter_outbox_record_drop(int64 record_id, const int64 *ids, int n);
extern bool m3ter_outbox_record_exists(int64 record_id);
extern int64 m3ter_outbox_write(M3terRowUpdate which, const int64 *ids, int n,
								const M3terRowOutcome *outcome);
extern void m3ter_outbox_fail_row(int64 id, const char *why);
extern TimestampTz m3ter_outbox_next_due(void);
extern bool m3ter_outbox_delete_expired(int retention_s);
extern int64 m3ter_outbox_sweep(M3terClaimState *s);

#endif							/* M3TER_OUTBOX_OUTBOX_H */
