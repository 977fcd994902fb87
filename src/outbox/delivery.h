/*-------------------------------------------------------------------------
 *
 * delivery.h
 *		The outbox delivery loop: claims, the sender, outcomes (delivery.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_OUTBOX_DELIVERY_H
#define M3TER_OUTBOX_DELIVERY_H

#include "client/sender.h"

typedef struct M3terFlushStats
{
	int64		claimed;		/* rows claimed */
	int64		accepted;		/* rows m3ter accepted */
	int64		failed;			/* rows marked failed */
	int64		retried;		/* rows left pending for a later attempt */
	int64		retried_fault;	/* of those, after a 5xx, a timeout or a network
								 * fault (not a 429) */
	int64		requests;		/* ingest requests made */
	int64		sent;			/* measurements sent, re-sends included */
	int64		resent;			/* measurements sent again after an earlier send */
	int64		throttled;		/* 429 answers (waited out in memory or retried later) */
	int64		orphaned;		/* rows of stale in-flight records */
	bool		stopped;		/* a configuration fault stopped delivery */
	int			stop_sqlstate;	/* the SQLSTATE of what stopped it (as a call raises) */
	char	   *error;			/* the last error seen, or NULL */
} M3terFlushStats;

typedef enum M3terTxnMode
{
	M3TER_TXN_WORKER,			/* the worker: a transaction per unit of work */
	M3TER_TXN_PROCEDURE,		/* CALL m3ter.flush(): SPI_commit() per unit */
	M3TER_TXN_CALLER			/* m3ter_flush(): all in the caller's transaction */
} M3terTxnMode;

typedef struct M3terDelivery
{
	M3terTxnMode mode;
	MemoryContext cxt;
	M3terSender sender;
	dlist_head	claims;
	int			n_claims;
	TimestampTz cursor_due;		/* keyset position of the claims */
	int64		cursor_id;
	bool		wrapped;		/* the last claim started from the front */
	bool		wrap_wanted;	/* start over once nothing is in flight */
	bool		exhausted;		/* a pass from the front found nothing due */
	bool		claim_lock_busy;	/* an atomic flush holds the claim lock */
	bool		subscribed;		/* a subscription fills the outbox now: claim no more */
	TimestampTz next_claim_at;	/* after a part-full request: claim from then on */
	TimestampTz held_until;		/* the pacer holds the next claim that long
								 * (the 5-minute budget, a wait m3ter asked
								 * for, the token endpoint's), and nothing is
								 * in flight (0: not) */
	int64		max_rows;		/* stop after claiming this many (0: no limit) */
	TimestampTz due_by;			/* a flush: only rows waiting for a retry that
								 * were due when it began (0: all due now) */
	M3terFlushStats stats;
} M3terDelivery;

extern void m3ter_delivery_start(M3terDelivery *d, M3terTxnMode mode, int64 max_rows);
extern bool m3ter_delivery_step(M3terDelivery *d, int wait_ms);
extern void m3ter_delivery_end(M3terDelivery *d);
extern bool m3ter_delivery_claim_failed(M3terTxnMode mode, const char *message);

#endif							/* M3TER_OUTBOX_DELIVERY_H */
