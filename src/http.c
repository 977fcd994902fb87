/*-------------------------------------------------------------------------
 *
 * http.c
 *		One HTTP exchange with m3ter over libcurl.
 *
 * A process keeps one curl easy handle, so connections to m3ter are
 * reused between requests (keep-alive) for as long as the process lives.
 *
 * Invariants:
 *	- Nothing inside a libcurl callback may ereport(): a longjmp through
 *	  libcurl would leave the handle in an undefined state.  The callbacks
 *	  therefore only use malloc'd buffers and report failure by return
 *	  value.  Every malloc'd object is freed before this file raises.
 *	- A request stays cancellable: the progress callback aborts the
 *	  transfer as soon as a query cancel or a termination is pending, and
 *	  the interrupt is then serviced with CHECK_FOR_INTERRUPTS().
 *	- Every request is bounded by m3ter.connect_timeout and
 *	  m3ter.request_timeout.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "miscadmin.h"

#include "m3ter.h"

/* Responses larger than this are cut off: m3ter answers are small */
#define M3TER_MAX_RESPONSE_BYTES (64 * 1024 * 1024)

typedef struct ResponseBuffer
{
	char	   *data;			/* malloc'd */
	size_t		len;
	size_t		cap;
	bool		overflow;
	int			retry_after_ms;
} ResponseBuffer;

static CURL *m3ter_curl = NULL;

/* Append response bytes; returns less than asked to abort on overflow */
static size_t
write_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	ResponseBuffer *buf = (ResponseBuffer *) userdata;
	size_t		n = size * nmemb;

	if (buf->len + n + 1 > M3TER_MAX_RESPONSE_BYTES)
	{
		buf->overflow = true;
		return 0;
	}
	if (buf->len + n + 1 > buf->cap)
	{
		size_t		newcap = Max(buf->cap * 2, buf->len + n + 1);
		char	   *p = realloc(buf->data, newcap);

		if (p == NULL)
			return 0;
		buf->data = p;
		buf->cap = newcap;
	}
	memcpy(buf->data + buf->len, ptr, n);
	buf->len += n;
	buf->data[buf->len] = '\0';
	return n;
}

/* Pick Retry-After (delay in seconds; the HTTP-date form is ignored) */
static size_t
read_header(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	ResponseBuffer *buf = (ResponseBuffer *) userdata;
	size_t		n = size * nmemb;
	static const char name[] = "retry-after:";

	if (n > sizeof(name) - 1 && pg_strncasecmp(ptr, name, sizeof(name) - 1) == 0)
	{
		char		value[32];
		size_t		vlen = Min(n - (sizeof(name) - 1), sizeof(value) - 1);
		char	   *end;
		double		seconds;

		memcpy(value, ptr + sizeof(name) - 1, vlen);
		value[vlen] = '\0';
		seconds = strtod(value, &end);
		if (end != value && seconds >= 0 && seconds < 86400)
			buf->retry_after_ms = (int) (seconds * 1000.0);
	}
	return n;
}

/* Abort the transfer when the backend has been asked to cancel or die */
static int
check_interrupts(void *clientp, curl_off_t dltotal, curl_off_t dlnow,
				 curl_off_t ultotal, curl_off_t ulnow)
{
	return (QueryCancelPending || ProcDiePending) ? 1 : 0;
}

/* The process's curl handle, set up once */
static CURL *
get_handle(void)
{
	if (m3ter_curl == NULL)
	{
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			ereport(ERROR,
					(errcode(ERRCODE_SYSTEM_ERROR),
					 errmsg("could not initialize libcurl")));
		m3ter_curl = curl_easy_init();
		if (m3ter_curl == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("could not create a libcurl handle")));
	}
	else
		curl_easy_reset(m3ter_curl);
	return m3ter_curl;
}

/*
 * Make one request and fill *response.  Transport failures (no connection,
 * timeout, reset) are returned with status 0, not raised; only an interrupt
 * raises, through CHECK_FOR_INTERRUPTS().
 */
void
m3ter_http_exchange(const char *method, const char *url,
					const char *authorization,
					const char *body, size_t body_len,
					M3terHttpResponse *response)
{
	CURL	   *curl = get_handle();
	struct curl_slist *headers = NULL;
	char	   *auth_header;
	ResponseBuffer buf = {NULL, 0, 0, false, -1};
	char		errbuf[CURL_ERROR_SIZE];
	CURLcode	rc;
	long		status = 0;
	bool		interrupted;

	errbuf[0] = '\0';
	auth_header = psprintf("Authorization: %s", authorization ? authorization : "");
	if (authorization != NULL)
		headers = curl_slist_append(headers, auth_header);
	headers = curl_slist_append(headers, "Accept: application/json");
	headers = curl_slist_append(headers, "Expect:");
	if (body != NULL)
		headers = curl_slist_append(headers, "Content-Type: application/json");

	curl_easy_setopt(curl, CURLOPT_URL, url);
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(curl, CURLOPT_USERAGENT, "m3ter-postgresql/1.0");
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, (long) m3ter_connect_timeout_ms);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long) m3ter_request_timeout_ms);
	curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, m3ter_tls_verify ? 1L : 0L);
	curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, m3ter_tls_verify ? 2L : 0L);
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(curl, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, write_body);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, &buf);
	curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, read_header);
	curl_easy_setopt(curl, CURLOPT_HEADERDATA, &buf);
	curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, check_interrupts);
	if (body != NULL)
	{
		curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) body_len);
	}
	if (strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0)
		curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
	else if (strcmp(method, "GET") == 0)
		curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);

	rc = curl_easy_perform(curl);
	if (rc == CURLE_OK)
		curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
	interrupted = (rc == CURLE_ABORTED_BY_CALLBACK);

	/* the header list holds the credentials: wipe our copy, free curl's */
	curl_slist_free_all(headers);
	explicit_bzero(auth_header, strlen(auth_header));
	pfree(auth_header);

	response->status = status;
	response->retry_after_ms = buf.retry_after_ms;
	response->body_len = buf.len;
	response->body = palloc(buf.len + 1);
	if (buf.len > 0)
		memcpy(response->body, buf.data, buf.len);
	response->body[buf.len] = '\0';
	free(buf.data);

	response->transport_error = NULL;
	if (rc != CURLE_OK)
	{
		if (buf.overflow)
			response->transport_error = psprintf("the response was larger than %d bytes",
												 M3TER_MAX_RESPONSE_BYTES);
		else
			response->transport_error = psprintf("%s (%s)", curl_easy_strerror(rc),
												 errbuf[0] ? errbuf : "no detail");
		/* a half-used connection is not reused */
		curl_easy_cleanup(m3ter_curl);
		m3ter_curl = NULL;
	}

	if (interrupted)
	{
		CHECK_FOR_INTERRUPTS();
		/* the flags were cleared by someone else: treat it as a fault */
	}
}
