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
extern bool m3ter_installed_version_ok(char **why);
extern bool m3ter_lock_extension(void);

#endif							/* M3TER_GROUND_VERSION_H */
