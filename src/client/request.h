/*-------------------------------------------------------------------------
 *
 * request.h
 *		One request to m3ter, paced, and its answer classified (request.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_CLIENT_REQUEST_H
#define M3TER_CLIENT_REQUEST_H

#include "ground/compat.h"
#include "client/http.h"
#include "client/pacing.h"

typedef enum M3terOutcome
{
	M3TER_OK,					/* 2xx */
	M3TER_TRANSIENT,			/* 408, 429, 500, 502-504, network: try later */
	M3TER_REJECTED,				/* 400 with m3ter's JSON error: the content */
	M3TER_TOO_LARGE,			/* 413, or 403 for the payload size: narrow it */
	M3TER_FORBIDDEN,			/* 401, 403: the token, else the configuration */
	M3TER_AUTH_FAILED,			/* the token endpoint refused the credentials */
	M3TER_UNEXPECTED			/* 3xx, 404, 405, other: not the rows' fault */
} M3terOutcome;

typedef struct M3terCallResult
{
	M3terOutcome outcome;
	long		status;
	char	   *body;			/* response body (palloc'd) */
	char	   *message;		/* the server's message or the local reason */
	int			requests;		/* HTTP requests made, token requests included */
	int			retry_after_ms; /* last Retry-After seen, -1 when none */
	int			retries;		/* times the call was tried again after a transient fault */
	bool		throttled;		/* 429s go on: the cluster's sends wait (retry_after_ms left) */
	bool		token_failed;	/* the answer is the token endpoint's: no token was had */
} M3terCallResult;

extern char *m3ter_api_base(M3terApi api);
extern void m3ter_take_answer(M3terApi api, const M3terHttpResponse *resp, TimestampTz sent_at,
							  M3terCallResult *result);
extern void m3ter_send_once(M3terApi api, const char *method, const char *url,
							char *authorization, const char *body, size_t body_len,
							int timeout_ms, M3terCallResult *result);
extern int	m3ter_call_sqlstate(const M3terCallResult *result, const char **hint);
pg_noreturn extern void m3ter_raise_call_error(const M3terCallResult *result,
											   const char *what);
extern bool m3ter_waits_too_long(const M3terCallResult *result, int attempt);
extern bool m3ter_throttled_now(M3terApi api, M3terCallResult *result);
extern int	m3ter_backoff_ms(int attempt, int retry_after_ms);
extern char *m3ter_org_path(const char *suffix);
extern char *m3ter_url_encode(const char *s);

#endif							/* M3TER_CLIENT_REQUEST_H */
