/*-------------------------------------------------------------------------
 *
 * token.h
 *		The cluster's bearer token (token.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_CLIENT_TOKEN_H
#define M3TER_CLIENT_TOKEN_H

#include "datatype/timestamp.h"
#include "client/request.h"

extern void m3ter_token_shmem_install(void);
extern char *m3ter_token_get(M3terCallResult *result);
extern void m3ter_token_forget(const char *token);
extern TimestampTz m3ter_token_wait(TimestampTz own_retry_at, bool cluster);
extern TimestampTz m3ter_token_failure(char *buf, size_t len);

#endif							/* M3TER_CLIENT_TOKEN_H */
