/*-------------------------------------------------------------------------
 *
 * http.c
 *		HTTP exchanges with m3ter over libcurl's multi interface: several
 *		requests in flight at once from one process.
 *
 * A process keeps one curl multi handle; its connection pool keeps
 * connections to m3ter open between requests (keep-alive).  A caller
 * starts requests with m3ter_http_start(), drives them with
 * m3ter_http_wait(), and collects finished ones with m3ter_http_collect().
 * m3ter_http_exchange() is the synchronous form (start, wait for that one
 * request, collect it); other requests in flight keep progressing while
 * it waits.
 *
 * Invariants:
 *	- Everything libcurl can touch (the request, its body, headers and
 *	  response buffer) is malloc'd, never palloc'd, so no memory context
 *	  reset can pull memory from under a transfer.  Nothing inside a
 *	  libcurl callback may ereport(): a longjmp through libcurl would leave
 *	  its handles in an undefined state; callbacks report by return value.
 *	- A request in flight when an error unwinds the caller is abandoned by
 *	  m3ter_http_abort_all(), which every error path of a caller runs.
 *	- Requests stay cancellable: the progress callback aborts transfers as
 *	  soon as a query cancel or a termination is pending, and the interrupt
 *	  is then serviced with CHECK_FOR_INTERRUPTS().
 *	- Every request is bounded by m3ter.connect_timeout and
 *	  m3ter.request_timeout.
 *	- A process whose postmaster died starts no request and waits for none:
 *	  the progress callback aborts its transfers and the process exits (see
 *	  m3ter_exit_if_orphaned()).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <time.h>

#include <curl/curl.h>

#include "lib/ilist.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/pmsignal.h"

#include "client/http.h"
#include "ground/errors.h"
#include "ground/settings.h"

/* Responses larger than this are cut off: m3ter answers are small */
#define M3TER_MAX_RESPONSE_BYTES (64 * 1024 * 1024)

/* Longest single wait inside libcurl, so the latch and interrupts are seen */
#define M3TER_POLL_SLICE_MS 10

struct M3terHttpRequest
{
	dlist_node	node;			/* in running or finished */
	CURL	   *easy;
	struct curl_slist *headers;
	char	   *body;			/* malloc'd copy of the request body */
	char	   *data;			/* malloc'd response body */
	size_t		len;
	size_t		cap;
	bool		overflow;
	bool		aborted;		/* stopped by the progress callback */
	int			retry_after_ms;
	bool		retry_after_ms_given;	/* Retry-After-Ms came: it wins */
	char		errbuf[CURL_ERROR_SIZE];
	CURLcode	rc;
	long		status;
	void	   *tag;			/* the caller's */
};

static CURLM *m3ter_multi = NULL;
static dlist_head running = DLIST_STATIC_INIT(running);
static dlist_head finished = DLIST_STATIC_INIT(finished);
static int	n_running = 0;

/* Append response bytes; returns less than asked to abort on overflow */
static size_t
write_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	M3terHttpRequest *req = (M3terHttpRequest *) userdata;
	size_t		n = size * nmemb;

	if (req->len + n + 1 > M3TER_MAX_RESPONSE_BYTES)
	{
		req->overflow = true;
		return 0;
	}
	if (req->len + n + 1 > req->cap)
	{
		size_t		newcap = Max(req->cap * 2, req->len + n + 1);
		char	   *p = realloc(req->data, newcap);

		if (p == NULL)
			return 0;
		req->data = p;
		req->cap = newcap;
	}
	memcpy(req->data + req->len, ptr, n);
	req->len += n;
	req->data[req->len] = '\0';
	return n;
}

/*
 * A header value that is a plain decimal number (digits, maybe a fraction,
 * spaces around it), or -1: no hex, exponent, sign or trailing words
 */
static double
plain_number(const char *value)
{
	const char *p = value;
	const char *start;
	bool		point = false;

	while (*p == ' ' || *p == '\t')
		p++;
	start = p;
	if (!isdigit((unsigned char) *p))
		return -1;
	for (; isdigit((unsigned char) *p) || (*p == '.' && !point); p++)
		point |= *p == '.';
	while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
		p++;
	return *p == '\0' ? strtod(start, NULL) : -1;
}

/* The longest wait a Retry-After names that is taken as it is (s) */
#define RETRY_AFTER_MAX_S 86400

/*
 * The delay a Retry-After value names in seconds: delay-seconds, or an HTTP
 * date (RFC 9110) as the time left until then; -1 when it is neither
 */
static double
retry_after_seconds(const char *value)
{
	double		seconds = plain_number(value);
	time_t		when;

	if (seconds >= 0)
		return seconds;
	/* "Sun, 06 Dec 2026 08:49:37 GMT": a date starts with a day's name */
	while (*value == ' ' || *value == '\t')
		value++;
	if (!isalpha((unsigned char) *value))
		return -1;
	when = curl_getdate(value, NULL);
	return when == -1 ? -1 : Max(difftime(when, time(NULL)), 0.0);
}

/*
 * Pick the wait an answer names: Retry-After (seconds or an HTTP date), or
 * Retry-After-Ms (milliseconds, as m3ter's generated SDKs read it), which
 * wins when both come.
 */
static size_t
read_header(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	M3terHttpRequest *req = (M3terHttpRequest *) userdata;
	size_t		n = size * nmemb;
	static const char name[] = "retry-after:";
	static const char name_ms[] = "retry-after-ms:";
	bool		in_ms = n > sizeof(name_ms) - 1 && pg_strncasecmp(ptr, name_ms, sizeof(name_ms) - 1) == 0;

	if (in_ms || (n > sizeof(name) - 1 && pg_strncasecmp(ptr, name, sizeof(name) - 1) == 0))
	{
		size_t		skip = in_ms ? sizeof(name_ms) - 1 : sizeof(name) - 1;
		char		value[64];
		size_t		vlen = Min(n - skip, sizeof(value) - 1);
		double		seconds;

		memcpy(value, ptr + skip, vlen);
		value[vlen] = '\0';
		if (in_ms)
		{
			seconds = plain_number(value);
			if (seconds >= 0)
				seconds /= 1000.0;
		}
		else
			seconds = retry_after_seconds(value);
		if (seconds >= 0 && (in_ms || !req->retry_after_ms_given))
		{
			/* a longer wait counts as a day (a spent daily quota, say): the rows wait, not retry */
			req->retry_after_ms = (int) (Min(seconds, (double) RETRY_AFTER_MAX_S) * 1000.0);
			req->retry_after_ms_given = in_ms;
		}
	}
	return n;
}

/* Abort a transfer when the backend has been asked to cancel or die */
static int
check_interrupts(void *clientp, curl_off_t dltotal, curl_off_t dlnow,
				 curl_off_t ultotal, curl_off_t ulnow)
{
	M3terHttpRequest *req = (M3terHttpRequest *) clientp;

	if (QueryCancelPending || ProcDiePending || !PostmasterIsAlive())
	{
		req->aborted = true;
		return 1;
	}
	return 0;
}

/*
 * Exit at once when the postmaster has died (killed, or its node failed).
 * Whatever this process sent or committed from then on would be lost with
 * the server or never reach the standby promoted in its place (no walsender
 * streams it): its rows would only be sent again from there.  The worker's
 * latch waits exit the same way (WL_EXIT_ON_PM_DEATH); this covers a drain
 * that never waits on its latch.
 */
void
m3ter_exit_if_orphaned(void)
{
	if (!PostmasterIsAlive())
		proc_exit(1);
}

/* The process's multi handle, set up once */
static CURLM *
get_multi(void)
{
	if (m3ter_multi == NULL)
	{
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			ereport(ERROR,
					(errcode(ERRCODE_SYSTEM_ERROR),
					 errmsg("could not initialize libcurl")));
		m3ter_multi = curl_multi_init();
		if (m3ter_multi == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("could not create a libcurl multi handle")));
		curl_multi_setopt(m3ter_multi, CURLMOPT_MAX_HOST_CONNECTIONS, 64L);
	}
	return m3ter_multi;
}

/* Free a request and everything libcurl held for it */
static void
free_request(M3terHttpRequest *req)
{
	if (req->easy != NULL)
		curl_easy_cleanup(req->easy);
	curl_slist_free_all(req->headers);
	free(req->body);
	free(req->data);
	free(req);
}

/* Append a header, or raise (the list so far stays with req, freed by the caller) */
static void
add_header(M3terHttpRequest *req, const char *line)
{
	struct curl_slist *l = curl_slist_append(req->headers, line);

	if (l == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory for an HTTP header")));
	req->headers = l;
}

/*
 * Start a request that may take timeout_ms in all (see m3ter_http_start())
 */
static M3terHttpRequest *
start_request(const char *method, const char *url, const char *authorization,
			  const char *body, size_t body_len, void *tag, int timeout_ms)
{
	CURLM	   *multi = get_multi();
	M3terHttpRequest *req = calloc(1, sizeof(M3terHttpRequest));
	CURL	   *curl;

	m3ter_exit_if_orphaned();
	if (req == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory for an HTTP request")));
	req->retry_after_ms = -1;
	req->retry_after_ms_given = false;
	req->tag = tag;

	PG_TRY();
	{
		req->easy = curl = curl_easy_init();
		if (curl == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("could not create a libcurl handle")));
		if (body != NULL)
		{
			req->body = malloc(Max(body_len, 1));
			if (req->body == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_OUT_OF_MEMORY),
						 errmsg("out of memory for an HTTP request body of %zu bytes", body_len)));
			memcpy(req->body, body, body_len);
		}
		if (authorization != NULL)
		{
			char	   *line = psprintf("Authorization: %s", authorization);

			add_header(req, line);
			explicit_bzero(line, strlen(line));
			pfree(line);
		}
		add_header(req, "Accept: application/json");
		add_header(req, "Expect:");
		/* every body is JSON but the token request's form encoding */
		if (body != NULL)
			add_header(req, body_len > 0 && (body[0] == '{' || body[0] == '[') ?
					   "Content-Type: application/json" :
					   "Content-Type: application/x-www-form-urlencoded");
	}
	PG_CATCH();
	{
		free_request(req);
		PG_RE_THROW();
	}
	PG_END_TRY();

	curl_easy_setopt(curl, CURLOPT_URL, url);
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, req->headers);
	curl_easy_setopt(curl, CURLOPT_USERAGENT, "m3ter-postgresql/" M3TER_VERSION);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, req->errbuf);
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, (long) m3ter_connect_timeout_ms);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long) timeout_ms);
	curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, m3ter_tls_verify ? 1L : 0L);
	curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, m3ter_tls_verify ? 2L : 0L);
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(curl, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, write_body);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, req);
	curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, read_header);
	curl_easy_setopt(curl, CURLOPT_HEADERDATA, req);
	curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, check_interrupts);
	curl_easy_setopt(curl, CURLOPT_XFERINFODATA, req);
	curl_easy_setopt(curl, CURLOPT_PRIVATE, req);
	if (body != NULL)
	{
		curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) body_len);
		curl_easy_setopt(curl, CURLOPT_POSTFIELDS, req->body);
	}
	if (strcmp(method, "GET") == 0)
		curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
	else if (strcmp(method, "POST") != 0)
		curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);

	if (curl_multi_add_handle(multi, curl) != CURLM_OK)
	{
		free_request(req);
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not start an HTTP request")));
	}
	dlist_push_tail(&running, &req->node);
	n_running++;
	return req;
}

/*
 * Start a request.  authorization is the Authorization header's value, or
 * NULL for none; the body (may be NULL) is copied.  tag is the caller's,
 * returned with the answer.
 */
M3terHttpRequest *
m3ter_http_start(const char *method, const char *url, const char *authorization,
				 const char *body, size_t body_len, void *tag)
{
	return start_request(method, url, authorization, body, body_len, tag, m3ter_request_timeout_ms);
}

/* Move every transfer libcurl reports as done to the finished list */
static void
harvest(void)
{
	CURLMsg    *msg;
	int			left;

	while ((msg = curl_multi_info_read(m3ter_multi, &left)) != NULL)
	{
		M3terHttpRequest *req = NULL;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &req);
		req->rc = msg->data.result;
		if (req->rc == CURLE_OK)
			curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &req->status);
		curl_multi_remove_handle(m3ter_multi, req->easy);
		dlist_delete(&req->node);
		dlist_push_tail(&finished, &req->node);
		n_running--;
	}
}

/*
 * Drive the transfers for at most timeout_ms, returning early when one
 * finishes or the process latch is set.  Returns the number still running.
 */
int
m3ter_http_wait(int timeout_ms)
{
	bool		interrupted = false;
	int			still;
	dlist_iter	it;

	if (m3ter_multi == NULL || n_running == 0)
		return 0;
	for (;;)
	{
		int			slice = Min(timeout_ms, M3TER_POLL_SLICE_MS);
		int			done_before = !dlist_is_empty(&finished);

		curl_multi_perform(m3ter_multi, &still);
		harvest();
		if (!dlist_is_empty(&finished) && !done_before)
			break;
		if (n_running == 0 || timeout_ms <= 0)
			break;
		curl_multi_poll(m3ter_multi, NULL, 0, Max(slice, 0), NULL);
		timeout_ms -= slice;
		m3ter_exit_if_orphaned();
		curl_multi_perform(m3ter_multi, &still);
		harvest();
		if (!dlist_is_empty(&finished) || QueryCancelPending || ProcDiePending ||
			(MyLatch != NULL && MyLatch->is_set))
			break;
	}

	dlist_foreach(it, &finished)
	{
		M3terHttpRequest *req = dlist_container(M3terHttpRequest, node, it.cur);

		interrupted |= req->aborted;
	}
	if (interrupted)
		CHECK_FOR_INTERRUPTS();
	return n_running;
}

/*
 * Take one finished request, if any: fill *response (palloc'd body) and
 * return the caller's tag through *tag.  Returns false when none is done.
 */
bool
m3ter_http_collect(M3terHttpResponse *response, void **tag)
{
	M3terHttpRequest *req;

	if (dlist_is_empty(&finished))
		return false;
	req = dlist_container(M3terHttpRequest, node, dlist_pop_head_node(&finished));

	response->status = req->rc == CURLE_OK ? req->status : 0;
	response->retry_after_ms = req->retry_after_ms;
	response->body_len = req->len;
	response->body = palloc(req->len + 1);
	if (req->len > 0)
		memcpy(response->body, req->data, req->len);
	response->body[req->len] = '\0';
	response->transport_error = NULL;
	response->bad_url = (req->rc == CURLE_URL_MALFORMAT || req->rc == CURLE_UNSUPPORTED_PROTOCOL);
	response->too_large = (req->rc != CURLE_OK && req->overflow);
	if (req->rc != CURLE_OK)
	{
		if (req->overflow)
			response->transport_error = psprintf("the response was larger than %d bytes",
												 M3TER_MAX_RESPONSE_BYTES);
		else
			response->transport_error = psprintf("%s (%s)", curl_easy_strerror(req->rc),
												 req->errbuf[0] ? req->errbuf : "no detail");
	}
	*tag = req->tag;
	free_request(req);
	return true;
}

/* Abandon every request, running or finished: for error paths */
void
m3ter_http_abort_all(void)
{
	dlist_mutable_iter it;

	if (m3ter_multi == NULL)
		return;
	dlist_foreach_modify(it, &running)
	{
		M3terHttpRequest *req = dlist_container(M3terHttpRequest, node, it.cur);

		curl_multi_remove_handle(m3ter_multi, req->easy);
		dlist_delete(&req->node);
		free_request(req);
	}
	dlist_foreach_modify(it, &finished)
	{
		M3terHttpRequest *req = dlist_container(M3terHttpRequest, node, it.cur);

		dlist_delete(&req->node);
		free_request(req);
	}
	n_running = 0;
}

/*
 * One request, synchronously, given timeout_ms in all (0: as long as
 * m3ter.request_timeout; never longer).  Transport failures (no connection,
 * timeout, reset) come back with status 0, not raised; only an interrupt
 * raises.  Other requests in flight progress meanwhile and stay collectable.
 */
void
m3ter_http_exchange(const char *method, const char *url,
					const char *authorization,
					const char *body, size_t body_len, int timeout_ms,
					M3terHttpResponse *response)
{
	M3terHttpRequest *req = start_request(method, url, authorization, body, body_len, NULL,
										  timeout_ms > 0 ? Min(timeout_ms, m3ter_request_timeout_ms) :
										  m3ter_request_timeout_ms);
	dlist_iter	it;

	for (;;)
	{
		m3ter_http_wait(M3TER_POLL_SLICE_MS);
		dlist_foreach(it, &finished)
		{
			if (dlist_container(M3terHttpRequest, node, it.cur) == req)
			{
				void	   *tag;

				/* move it to the front and collect it */
				dlist_delete(&req->node);
				dlist_push_head(&finished, &req->node);
				m3ter_http_collect(response, &tag);
				return;
			}
		}
		CHECK_FOR_INTERRUPTS();
	}
}
