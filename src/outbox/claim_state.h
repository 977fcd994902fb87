/*-------------------------------------------------------------------------
 *
 * claim_state.h
 *		The frontier of fresh-row claims and the gaps behind it (claim_state.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_OUTBOX_CLAIM_STATE_H
#define M3TER_OUTBOX_CLAIM_STATE_H

#include "datatype/timestamp.h"

typedef struct M3terClaimState
{
	int64		frontier;		/* fresh rows are claimed after this id */
	int			n_gaps;			/* ids gap_lo[i]..gap_hi[i] to read again */
	int			cap_gaps;
	int64	   *gap_lo;
	int64	   *gap_hi;
	int64		sample_id;		/* gaps up to it settle when ... (0: none) */
	int			n_vxids;		/* ... these transactions have ended */
	int64	   *vxids;
	bool		changed;
	int64		seq_seen;		/* the sequence's last id when read */
	int64		sweep_from;		/* the next sweep goes on after this id ... */
	int64		sweep_rows;		/* ... over this many rows (0: not due yet) */
} M3terClaimState;

/*
 * A sweep behind the frontier (m3ter_outbox_sweep) is due this long after
 * the last, and walks this many rows for each second since, up to a limit
 */
#define M3TER_SWEEP_INTERVAL_S 10
#define M3TER_SWEEP_ROWS_PER_S 1000
#define M3TER_SWEEP_MAX_ROWS 100000

extern void m3ter_claim_state_read(M3terClaimState *s);
extern void m3ter_claim_state_write(M3terClaimState *s);
extern void m3ter_claim_state_add_gap(M3terClaimState *s, int64 lo, int64 hi);
extern void m3ter_claim_state_drop_ids(M3terClaimState *s, const int64 *seen, int n);
extern bool m3ter_claim_state_sample_ended(const M3terClaimState *s);
extern void m3ter_claim_state_settle(M3terClaimState *s, bool ended);
extern TimestampTz m3ter_claim_state_recheck_at(void);

#endif							/* M3TER_OUTBOX_CLAIM_STATE_H */
