/*-------------------------------------------------------------------------
 *
 * events.h
 *		Ingest failure events written back to the outbox (events.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_OUTBOX_EVENTS_H
#define M3TER_OUTBOX_EVENTS_H

extern void m3ter_events_poll_logged(void);

#endif							/* M3TER_OUTBOX_EVENTS_H */
