/*-------------------------------------------------------------------------
 *
 * subscriber.h
 *		The outbox as a logical-replication subscription's table (subscriber.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_GROUND_SUBSCRIBER_H
#define M3TER_GROUND_SUBSCRIBER_H

extern char *m3ter_outbox_subscription(void);
extern void m3ter_require_not_subscribed(const char *what);

#endif							/* M3TER_GROUND_SUBSCRIBER_H */
