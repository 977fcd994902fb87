/*-------------------------------------------------------------------------
 *
 * launcher.h
 *		The launcher: one worker per database with the extension (launcher.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_ENTRY_LAUNCHER_H
#define M3TER_ENTRY_LAUNCHER_H

extern void m3ter_launcher_install(void);

#endif							/* M3TER_ENTRY_LAUNCHER_H */
