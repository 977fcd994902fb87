/*-------------------------------------------------------------------------
 *
 * client.h
 *		The synchronous call to m3ter's APIs (client.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_CLIENT_CLIENT_H
#define M3TER_CLIENT_CLIENT_H

#include <cjson/cJSON.h>

#include "client/request.h"

extern void m3ter_call(M3terApi api, const char *method, const char *path,
					   const char *body, size_t body_len, int max_retries,
					   M3terCallResult *result);
extern cJSON *m3ter_call_answer(M3terApi api, const char *method, const char *path,
								 const char *body, const char *what);
extern Datum m3ter_call_jsonb(M3terApi api, const char *method, const char *path,
							  const char *body, const char *what);

#endif							/* M3TER_CLIENT_CLIENT_H */
