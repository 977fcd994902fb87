/*-------------------------------------------------------------------------
 *
 * request.c
 *		One request to m3ter: paced, sent, and its answer classified by
 *		whose fault it is.
 *
 * Every answer gets one outcome (m3ter_take_answer), used by the sender
 * (sender.c, for measurements), by the token's request (token.c) and by
 * m3ter_call (client.c, the Config API):
 *
 *	2xx					M3TER_OK (unless the body is an HTML page: see below)
 *	408, 429, 500,		M3TER_TRANSIENT: worth trying later, with growing
 *	502, 503, 504,		delays (1 s, 3 s, 9 s, ... capped by
 *	no answer			m3ter.retry_max_delay, never shorter than
 *						Retry-After)
 *	400 with m3ter's	M3TER_REJECTED: the content of the request; the
 *	JSON error			only answer that may fail measurements
 *	413, 403 naming		M3TER_TOO_LARGE: narrow the request
 *	the payload size
 *	401, 403			M3TER_FORBIDDEN: fetch a fresh token and try once
 *						more; with a fresh token it is the configuration
 *	3xx, 404, 405,		M3TER_UNEXPECTED: not the rows' fault (a wrong URL,
 *	any other status,	a proxy's page): nothing is failed, delivery stops
 *	a non-JSON 4xx page, and says why
 *	an HTML 2xx page,
 *	a URL libcurl
 *	cannot use
 *
 * The token endpoint refusing the credentials is M3TER_AUTH_FAILED.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>
#include <cjson/cJSON.h>

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/timestamp.h"

#include "client/request.h"
#include "client/http.h"
#include "client/pacing.h"
#include "ground/errors.h"
#include "ground/json.h"
#include "ground/settings.h"

PG_FUNCTION_INFO_V1(m3ter_backoff_delay);

/* The base URL of an API, without a trailing slash */
char *
m3ter_api_base(M3terApi api)
{
	const char *base;
	int			len;

	m3ter_settings_catch_up();
	base = (api == M3TER_INGEST_API) ? m3ter_ingest_url : m3ter_api_url;
	len = strlen(base);

	while (len > 0 && base[len - 1] == '/')
		len--;
	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s is not set", api == M3TER_INGEST_API ? "m3ter.ingest_url" : "m3ter.api_url")));
	return pnstrdup(base, len);
}

/* "/organizations/{org}{suffix}" */
char *
m3ter_org_path(const char *suffix)
{
	return psprintf("/organizations/%s%s", m3ter_require_org_id(), suffix);
}

/*
 * Percent-encode a query parameter value given in the database encoding
 * (an account code, a page token of a parsed answer) as UTF-8, which m3ter
 * reads
 */
char *
m3ter_url_encode(const char *s)
{
	StringInfoData buf;

	s = m3ter_server_to_utf8(s, strlen(s), "a query parameter for m3ter");
	initStringInfo(&buf);
	for (; *s; s++)
	{
		unsigned char c = (unsigned char) *s;

		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
			(c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' || c == '~')
			appendStringInfoChar(&buf, c);
		else
			appendStringInfo(&buf, "%%%02X", c);
	}
	return buf.data;
}

/*
 * Does the answer name a wait longer than a call from SQL should take, at
 * its attempt (0-based)?  A Retry-After longer than m3ter.retry_max_delay,
 * or the cluster's growing wait while 429s go on (minutes, at its longest)
 * when it is longer than the call's own next retry would wait.  Such a call
 * gives up at once instead of holding its session: the outbox puts such
 * rows back pending for then.
 */
bool
m3ter_waits_too_long(const M3terCallResult *result, int attempt)
{
	if (result->outcome != M3TER_TRANSIENT)
		return false;
	if (result->throttled)
		return result->retry_after_ms > m3ter_backoff_ms(attempt, -1);
	return result->retry_after_ms > m3ter_retry_max_delay_ms;
}

/*
 * Is api held by the growing wait of 429s that go on (pacing.c)?  Then fill
 * result as such a 429, with what is left of the wait as its Retry-After.
 */
bool
m3ter_throttled_now(M3terApi api, M3terCallResult *result)
{
	bool		backing_off;
	TimestampTz until = m3ter_pace_held_until(api, &backing_off);

	if (until == 0 || !backing_off)
		return false;
	result->outcome = M3TER_TRANSIENT;
	result->status = 429;
	result->throttled = true;
	result->retry_after_ms = Max(result->retry_after_ms,
								 (int) Min((until - GetCurrentTimestamp() + 999) / 1000, (int64) INT_MAX));
	if (result->message == NULL)
		result->message = "m3ter keeps answering 429 (too many requests)";
	return true;
}

/* Delay before retry number attempt (0-based): 1 s, 3 s, 9 s, ... */
int
m3ter_backoff_ms(int attempt, int retry_after_ms)
{
	int64		delay = 1000;

	while (attempt-- > 0 && delay < m3ter_retry_max_delay_ms)
		delay *= 3;
	delay = Min(delay, (int64) m3ter_retry_max_delay_ms);
	if (retry_after_ms > delay)
		delay = retry_after_ms;
	return (int) delay;
}

/*
 * m3ter.backoff_delay(attempt int, retry_after_ms int) RETURNS interval
 *
 * Used by version 1.0 of the SQL objects only; kept so that they load.
 */
Datum
m3ter_backoff_delay(PG_FUNCTION_ARGS)
{
	Interval   *delay = palloc0(sizeof(Interval));

	delay->time = (int64) m3ter_backoff_ms(PG_GETARG_INT32(0), PG_GETARG_INT32(1)) * 1000;
	PG_RETURN_INTERVAL_P(delay);
}

/* Is body m3ter's JSON error (an object)? */
static bool
is_json_error(const char *body)
{
	cJSON	   *root = cJSON_Parse(body);
	bool		yes = cJSON_IsObject(root);

	cJSON_Delete(root);
	return yes;
}

static void classify(const M3terHttpResponse *resp, M3terCallResult *result, bool ingest);

/*
 * Is a 2xx body (text: no NUL byte in it) m3ter's success?  m3ter's ingest
 * answers {"result": "accepted"} (or, from a gateway, nothing), the Config
 * API one JSON object that does not say otherwise.  A proxy's page, plain
 * text ("OK"), an array or a bare value, JSON with more after it, a
 * "result" other than accepted, or a blank answer to a Config API call is
 * not: m3ter did not do what was asked.
 */
static bool
is_success_body(const char *body, bool ingest)
{
	cJSON	   *root;
	const cJSON *result;
	bool		yes;

	while (*body == ' ' || *body == '\t' || *body == '\r' || *body == '\n')
		body++;
	if (*body == '\0')
		return ingest;
	root = cJSON_ParseWithOpts(body, NULL, true);
	if (root == NULL)
		return false;
	result = cJSON_GetObjectItemCaseSensitive(root, "result");
	yes = cJSON_IsObject(root) &&
		(cJSON_IsString(result) ? pg_strcasecmp(result->valuestring, "accepted") == 0 : !ingest);
	cJSON_Delete(root);
	return yes;
}

/* Does a message speak of the payload's size (m3ter's 403 for it)? */
static bool
names_payload_size(const char *message)
{
	char	   *lower = pstrdup(message);
	char	   *p;
	bool		yes;

	for (p = lower; *p; p++)
		*p = pg_ascii_tolower((unsigned char) *p);
	yes = strstr(lower, "payload") != NULL &&
		(strstr(lower, "exceed") != NULL || strstr(lower, "large") != NULL ||
		 strstr(lower, "limit") != NULL);

	pfree(lower);
	return yes;
}

/*
 * Take api's answer to a request sent at sent_at: classify it into result
 * (see the file header; an Ingest API success is {"result": "accepted"}),
 * tell the pacer, and when 429s go on, make result the cluster's wait (a
 * 429 with what is left of it as its Retry-After: this 429 may have
 * started it).
 */
void
m3ter_take_answer(M3terApi api, const M3terHttpResponse *resp, TimestampTz sent_at,
				  M3terCallResult *result)
{
	classify(resp, result, api == M3TER_INGEST_API);
	m3ter_pace_feedback(api, resp->status, resp->retry_after_ms, sent_at);
	if (resp->status == 429)
		(void) m3ter_throttled_now(api, result);
}

static void
classify(const M3terHttpResponse *resp, M3terCallResult *result, bool ingest)
{
	long		status = resp->status;
	char	   *msg = NULL;

	/* a NUL byte in the body (UTF-16, say): read as a C string, the rest would go unseen */
	bool		binary = memchr(resp->body, '\0', resp->body_len) != NULL;

	result->status = status;
	result->throttled = false;
	result->body = resp->body;
	if (resp->retry_after_ms >= 0)
		result->retry_after_ms = resp->retry_after_ms;
	result->message = NULL;

	if (status >= 200 && status < 300 && !binary && is_success_body(resp->body, ingest))
	{
		result->outcome = M3TER_OK;
		return;
	}
	if (status == 0)
	{
		/* a URL libcurl cannot use is a setting to fix, not an outage */
		result->outcome = resp->bad_url ? M3TER_UNEXPECTED : M3TER_TRANSIENT;
		result->message = resp->bad_url ?
			psprintf("the URL cannot be used (%s); check m3ter.ingest_url and m3ter.api_url",
					 resp->transport_error) : resp->transport_error;
		return;
	}

	if (binary)
		msg = psprintf("HTTP %ld with a body that is not text (a NUL byte in its first %zu bytes)",
					   status, strlen(resp->body) + 1);
	else
		msg = m3ter_answer_message(resp->body);
	if (msg == NULL)
		msg = psprintf("HTTP %ld with an empty body", status);

	switch (status)
	{
		case 408:
		case 429:
		case 500:
		case 502:
		case 503:
		case 504:
			result->outcome = M3TER_TRANSIENT;
			break;
		case 413:
			result->outcome = M3TER_TOO_LARGE;
			break;
		case 401:
			result->outcome = M3TER_FORBIDDEN;
			break;
		case 403:
			result->outcome = names_payload_size(msg) ? M3TER_TOO_LARGE : M3TER_FORBIDDEN;
			break;
		case 400:
			if (is_json_error(resp->body))
			{
				result->outcome = M3TER_REJECTED;
				break;
			}
			/* FALLTHROUGH */
		default:
			result->outcome = M3TER_UNEXPECTED;
			if (status >= 300 && status < 400)
				msg = psprintf("an unexpected redirect (HTTP %ld); check the URL settings: %s", status, msg);
			else if (!is_json_error(resp->body))
				msg = psprintf("an unexpected answer (HTTP %ld) that is not m3ter's JSON: %s", status, msg);
			else
				msg = psprintf("an unexpected answer (HTTP %ld): %s", status, msg);
			break;
	}
	result->message = msg;
}

/*
 * Send one paced request synchronously with the given Authorization value
 * and classify the answer into result; timeout_ms as for
 * m3ter_http_exchange().  The credential is wiped and freed on every path.
 */
void
m3ter_send_once(M3terApi api, const char *method, const char *url, char *authorization,
				const char *body, size_t body_len, int timeout_ms, M3terCallResult *result)
{
	M3terHttpResponse resp;
	TimestampTz sent_at;

	m3ter_pace(api);
	sent_at = GetCurrentTimestamp();
	PG_TRY();
	{
		m3ter_http_exchange(method, url, authorization, body, body_len, timeout_ms, &resp);
	}
	PG_FINALLY();
	{
		explicit_bzero(authorization, strlen(authorization));
		pfree(authorization);
	}
	PG_END_TRY();
	result->requests++;
	m3ter_take_answer(api, &resp, sent_at, result);
}

/*
 * The SQLSTATE and hint that a failed call deserves: one SQLSTATE per cause,
 * whoever reports it (a call's error, a flush's or the worker's warning).
 * hint may be NULL.
 */
int
m3ter_call_sqlstate(const M3terCallResult *result, const char **hint)
{
	const char *ignored;

	if (hint == NULL)
		hint = &ignored;
	switch (result->outcome)
	{
		case M3TER_TRANSIENT:
			if (result->throttled)
				*hint = psprintf("The cluster sends nothing to m3ter for %d s more, a wait that grows while m3ter answers 429; try again then.",
								 (result->retry_after_ms + 999) / 1000);
			else if (result->retry_after_ms > m3ter_retry_max_delay_ms)
				*hint = psprintf("m3ter asked to wait %d s (Retry-After), longer than m3ter.retry_max_delay; try again then.",
								 (result->retry_after_ms + 999) / 1000);
			else if (result->retries == 0)
				*hint = "The call was not retried; try again later, or raise m3ter.max_retries.";
			else
				*hint = psprintf("The call was retried %d time%s with growing delays; raise m3ter.max_retries or try again later.",
								 result->retries, result->retries == 1 ? "" : "s");
			return result->status == 0 ? ERRCODE_M3TER_NETWORK :
				result->status == 429 ? ERRCODE_M3TER_RATE_LIMITED : ERRCODE_M3TER_SERVER;
		case M3TER_FORBIDDEN:
			*hint = "Check m3ter.org_id and the Service User's permissions; the bearer token was already renewed once.";
			return ERRCODE_M3TER_FORBIDDEN;
		case M3TER_AUTH_FAILED:
			*hint = m3ter_credentials_file != NULL && m3ter_credentials_file[0] != '\0' ?
				"Check access_key_id and api_secret in the file named by m3ter.credentials_file." :
				"Check m3ter.access_key_id and m3ter.api_secret.";
			return ERRCODE_M3TER_AUTH;
		case M3TER_TOO_LARGE:
			*hint = "Ask for less in one call.";
			return ERRCODE_M3TER_TOO_LARGE;
		case M3TER_REJECTED:
			/* after a server error, the earlier attempt may have taken effect */
			*hint = result->retries == 0 ?
				"m3ter will not accept this request as it is; it was not retried." :
				psprintf("m3ter will not accept this request as it is. It had been retried %d time%s after failing: an earlier attempt may have taken effect (a meter created, for example).",
						 result->retries, result->retries == 1 ? "" : "s");
			return ERRCODE_M3TER_BAD_REQUEST;
		case M3TER_UNEXPECTED:
			if (result->status == 404)
			{
				*hint = "Check the ids and codes in the call, and m3ter.api_url and m3ter.ingest_url.";
				return ERRCODE_M3TER_NOT_FOUND;
			}
			*hint = "Check m3ter.api_url and m3ter.ingest_url: something other than m3ter answered.";
			return ERRCODE_M3TER_UNEXPECTED;
		default:
			elog(ERROR, "m3ter call did not fail");
	}
	return 0;					/* keep the compiler quiet */
}

/* Raise the error that a failed call deserves; what names the call */
void
m3ter_raise_call_error(const M3terCallResult *result, const char *what)
{
	const char *hint;
	int			code = m3ter_call_sqlstate(result, &hint);

	/* no token was had: the token endpoint failed, not the call's own API */
	const char *whose = result->token_failed ? "m3ter's token endpoint" : "m3ter";

	if (result->status == 0)
		ereport(ERROR,
				(errcode(code),
				 errmsg("%s failed: %s could not be reached", what, whose),
				 errdetail("%s", result->message ? result->message : "no detail"),
				 errhint("%s", hint)));
	else if (result->outcome == M3TER_AUTH_FAILED)
		ereport(ERROR,
				(errcode(code),
				 errmsg("%s failed: m3ter refused the credentials (HTTP %ld)", what, result->status),
				 errdetail("m3ter said: %s", result->message ? result->message : ""),
				 errhint("%s", hint)));
	else						/* an answer not m3ter's: the message says what it was */
		ereport(ERROR,
				(errcode(code),
				 result->token_failed ?
				 errmsg("%s failed: %s answered HTTP status %ld", what, whose, result->status) :
				 errmsg("%s failed with HTTP status %ld", what, result->status),
				 result->outcome == M3TER_UNEXPECTED ?
				 errdetail("%s", result->message ? result->message : "") :
				 errdetail("m3ter said: %s", result->message ? result->message : ""),
				 errhint("%s", hint)));
}
