/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		Shared memory, registered by each module that keeps state there.
 *
 * While the library is preloaded, a module that shares state across the
 * cluster (the workers' slots, pacing, the token, the catalog's counters)
 * registers its struct from its own install function, which _PG_init calls.
 * One pair of hooks then asks for the space of all of them and creates
 * or attaches each under its name, so no module sizes another's state.
 * Without preloading nothing is registered and each module keeps its
 * state in process memory.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "ground/shmem.h"

typedef struct Registration
{
	const char *name;
	Size		size;
	void	  **shared;			/* where the module keeps its pointer */
	M3terShmemInit init;
} Registration;

#define MAX_REGISTRATIONS 8

static Registration registrations[MAX_REGISTRATIONS];
static int	n_registrations = 0;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* Ask for the space of every registered struct */
static void
shmem_request(void)
{
	int			i;

	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	for (i = 0; i < n_registrations; i++)
		RequestAddinShmemSpace(MAXALIGN(registrations[i].size));
}

/* Create, or attach to, every registered struct */
static void
shmem_startup(void)
{
	int			i;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	for (i = 0; i < n_registrations; i++)
	{
		Registration *r = &registrations[i];
		bool		found;
		void	   *shared = ShmemInitStruct(r->name, r->size, &found);

		if (!found)
		{
			memset(shared, 0, r->size);
			if (r->init)
				r->init(shared);
		}
		*r->shared = shared;
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Register a struct of size bytes under name (while preloading); *shared
 * points to it in every process once shared memory exists, and init sets
 * it up once, when it is created.
 */
void
m3ter_shmem_register(const char *name, Size size, void **shared, M3terShmemInit init)
{
	Assert(process_shared_preload_libraries_in_progress);
	if (n_registrations == MAX_REGISTRATIONS)
		elog(ERROR, "too many shared memory registrations");
	if (n_registrations == 0)
	{
		prev_shmem_request_hook = shmem_request_hook;
		shmem_request_hook = shmem_request;
		prev_shmem_startup_hook = shmem_startup_hook;
		shmem_startup_hook = shmem_startup;
	}
	registrations[n_registrations++] = (Registration) {name, size, shared, init};
}
