/*-------------------------------------------------------------------------
 *
 * version.h
 *		The installed SQL version against the library's (version.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_GROUND_VERSION_H
#define M3TER_GROUND_VERSION_H

extern void m3ter_require_installed_version(void);
/* m3ter in a database, against this library */
typedef enum M3terVersionState
{
	M3TER_VERSION_OK,			/* a version the library supports */
	M3TER_VERSION_ABSENT,		/* not installed */
	M3TER_VERSION_OLDER,		/* ALTER EXTENSION m3ter UPDATE brings it up */
	M3TER_VERSION_NEWER			/* the library is the old part */
} M3terVersionState;

extern M3terVersionState m3ter_installed_version_state(char **why);
extern bool m3ter_lock_extension(void);

#endif							/* M3TER_GROUND_VERSION_H */
