/*-------------------------------------------------------------------------
 *
 * periodic.h
 *		The worker's periodic tasks (periodic.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_ENTRY_PERIODIC_H
#define M3TER_ENTRY_PERIODIC_H

extern bool m3ter_periodic_tasks_if_due(bool rows_due);

#endif							/* M3TER_ENTRY_PERIODIC_H */
