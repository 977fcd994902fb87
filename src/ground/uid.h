/*-------------------------------------------------------------------------
 *
 * uid.h
 *		Fresh uids for measurements (uid.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_GROUND_UID_H
#define M3TER_GROUND_UID_H

extern char *m3ter_new_uid(void);

#endif							/* M3TER_GROUND_UID_H */
