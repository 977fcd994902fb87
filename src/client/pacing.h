/*-------------------------------------------------------------------------
 *
 * pacing.h
 *		m3ter's rate limits, shared by the cluster (pacing.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_CLIENT_PACING_H
#define M3TER_CLIENT_PACING_H

#include "datatype/timestamp.h"
/* m3ter's APIs, paced apart */
typedef enum M3terApi
{
	M3TER_CONFIG_API,
	M3TER_INGEST_API,
	M3TER_EXPLORER_API			/* the usage query: Config API host, its own limit */
} M3terApi;

#define M3TER_NUM_APIS 3

/*
 * A hold of the next request longer than this is a wait to rest through:
 * senders claim no rows for it and hand back those not yet sent
 */
#define M3TER_HOLD_HORIZON_MS 1000

extern TimestampTz m3ter_beyond_hold_horizon(TimestampTz until);
extern void m3ter_pacing_shmem_install(void);
extern bool m3ter_pace_try(M3terApi api, int horizon_ms, int *wait_ms);
extern void m3ter_pace(M3terApi api);
extern TimestampTz m3ter_pace_held_until(M3terApi api, bool *backing_off);
extern TimestampTz m3ter_pace_budget_at(M3terApi api, int ahead);
extern TimestampTz m3ter_pace_budget_holds(M3terApi api);
extern TimestampTz m3ter_pace_wait_holds(M3terApi api, bool *backing_off);
extern void m3ter_pace_feedback(M3terApi api, long status, int retry_after_ms, TimestampTz sent_at);
extern void m3ter_sleep_ms(int ms);

#endif							/* M3TER_CLIENT_PACING_H */
