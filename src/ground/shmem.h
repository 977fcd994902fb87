/*-------------------------------------------------------------------------
 *
 * shmem.h
 *		Shared memory, registered by each module that keeps state there.
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_GROUND_SHMEM_H
#define M3TER_GROUND_SHMEM_H

/* Sets up a struct the first time it is created (it arrives zeroed) */
typedef void (*M3terShmemInit) (void *shared);

extern void m3ter_shmem_register(const char *name, Size size, void **shared,
								 M3terShmemInit init);

#endif							/* M3TER_GROUND_SHMEM_H */
