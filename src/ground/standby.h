/*-------------------------------------------------------------------------
 *
 * standby.h
 *		Refusing writes on a standby, clearly (standby.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_GROUND_STANDBY_H
#define M3TER_GROUND_STANDBY_H

extern void m3ter_require_primary(const char *what);

#endif							/* M3TER_GROUND_STANDBY_H */
