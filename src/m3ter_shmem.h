/*-------------------------------------------------------------------------
 *
 * m3ter_shmem.h
 *		The shared struct of shmem.c, for shmem.c and worker.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_SHMEM_H
#define M3TER_SHMEM_H

#include "storage/latch.h"
#include "storage/s_lock.h"
#include "utils/timestamp.h"

typedef struct M3terShared
{
	slock_t		mutex;

	/* the background worker */
	Latch	   *worker_latch;	/* set to wake it; NULL when not running or disabled */
	pid_t		worker_pid;
	TimestampTz worker_started_at;
	TimestampTz last_drain_at;
	char		worker_state[64];

	/* delivery figures of the worker and m3ter_flush() since start */
	TimestampTz last_accepted_at;
	int64		requests;
	int64		measurements;
	int64		accepted;
	int64		failed;
	int64		retried;
	char		last_error[256];
	TimestampTz last_error_at;
} M3terShared;

extern M3terShared *m3ter_shared;

extern void m3ter_worker_attach(void);
extern void m3ter_worker_listen(bool listen);
extern void m3ter_worker_note(const char *state, bool drained);

#endif							/* M3TER_SHMEM_H */
