/*-------------------------------------------------------------------------
 *
 * credentials.h
 *		The credentials: settings or m3ter.credentials_file (credentials.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_CLIENT_CREDENTIALS_H
#define M3TER_CLIENT_CREDENTIALS_H

extern char *m3ter_basic_credentials(void);
extern void m3ter_require_credentials(void);
extern uint32 m3ter_credentials_fingerprint(void);

#endif							/* M3TER_CLIENT_CREDENTIALS_H */
