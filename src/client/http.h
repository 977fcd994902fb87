/*-------------------------------------------------------------------------
 *
 * http.h
 *		HTTP over libcurl's multi interface (http.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_CLIENT_HTTP_H
#define M3TER_CLIENT_HTTP_H

typedef struct M3terHttpResponse
{
	long		status;			/* HTTP status, 0 when no response came */
	char	   *body;			/* palloc'd, NUL-terminated, never NULL */
	size_t		body_len;
	int			retry_after_ms; /* from Retry-After, -1 when absent */
	char	   *transport_error;	/* why no response came, else NULL */
	bool		bad_url;		/* ... because the URL cannot be used */
	bool		too_large;		/* ... because the body passed the size cap */
} M3terHttpResponse;

typedef struct M3terHttpRequest M3terHttpRequest;

extern M3terHttpRequest *m3ter_http_start(const char *method, const char *url,
										  const char *authorization,
										  const char *body, size_t body_len,
										  void *tag);
extern int	m3ter_http_wait(int timeout_ms);
extern void m3ter_exit_if_orphaned(void);

extern bool m3ter_http_collect(M3terHttpResponse *response, void **tag);
extern void m3ter_http_abort_all(void);
extern void m3ter_http_exchange(const char *method, const char *url,
								const char *authorization,
								const char *body, size_t body_len, int timeout_ms,
								M3terHttpResponse *response);

#endif							/* M3TER_CLIENT_HTTP_H */
