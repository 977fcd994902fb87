/*-------------------------------------------------------------------------
 *
 * catalog.h
 *		The catalog synced from m3ter; checks before sending (catalog.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_OUTBOX_CATALOG_H
#define M3TER_OUTBOX_CATALOG_H

#include "lib/stringinfo.h"
#include "ground/measurement.h"

extern void m3ter_catalog_shmem_install(void);
extern void m3ter_catalog_prepare(void);
extern const char *m3ter_catalog_verdict(const M3terMeasurement *m, bool *hold);
extern void m3ter_catalog_sync(bool accounts, int max_retries, StringInfo out);
extern void m3ter_catalog_note_error(const char *message);
extern uint64 m3ter_catalog_rows_held(void);
extern void m3ter_catalog_lookup_unknown(int max_retries);

#endif							/* M3TER_OUTBOX_CATALOG_H */
