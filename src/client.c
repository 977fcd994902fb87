/*-------------------------------------------------------------------------
 *
 * client.c
 *		m3ter's error and retry rules around one API call.
 *
 * m3ter_call() obtains a bearer token when none is cached, sends the
 * request at the paced rate, and classifies the answer:
 *
 *	2xx					M3TER_OK
 *	403					with a cached token: forget it, fetch a new one and
 *						send once more; with a fresh token: M3TER_FORBIDDEN
 *	429, 500, 502,		M3TER_TRANSIENT; retried here up to max_retries
 *	503, 504, 408,		times after 1 s, 3 s, 9 s, ... (capped by
 *	no response			m3ter.retry_max_delay, never shorter than
 *						Retry-After)
 *	413					M3TER_TOO_LARGE: the caller narrows the request
 *	other 4xx, 3xx		M3TER_REJECTED: not retried
 *
 * Synchronous SQL functions pass m3ter.max_retries and raise on anything
 * but M3TER_OK with m3ter_raise_call_error(); the outbox passes 0 and
 * schedules its own retries instead of sleeping.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/timestamp.h"

#include "m3ter.h"
#include "m3ter_json.h"

PG_FUNCTION_INFO_V1(m3ter_backoff_delay);

/* The base URL of an API, without a trailing slash */
static char *
api_base(M3terApi api)
{
	const char *base = (api == M3TER_INGEST_API) ? m3ter_ingest_url : m3ter_api_url;
	int			len = strlen(base);

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

/* m3ter.backoff_delay(attempt int, retry_after_ms int) RETURNS interval */
Datum
m3ter_backoff_delay(PG_FUNCTION_ARGS)
{
	Interval   *delay = palloc0(sizeof(Interval));

	delay->time = (int64) m3ter_backoff_ms(PG_GETARG_INT32(0), PG_GETARG_INT32(1)) * 1000;
	PG_RETURN_INTERVAL_P(delay);
}

/* Sleep ms milliseconds, staying responsive to cancel and shutdown */
void
m3ter_sleep_ms(int ms)
{
	TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);

	for (;;)
	{
		long		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), until);

		CHECK_FOR_INTERRUPTS();
		if (left <= 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 left, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* Classify an HTTP status */
static M3terOutcome
classify(long status)
{
	if (status >= 200 && status < 300)
		return M3TER_OK;
	switch (status)
	{
		case 0:
		case 408:
		case 429:
		case 500:
		case 502:
		case 503:
		case 504:
			return M3TER_TRANSIENT;
		case 403:
			return M3TER_FORBIDDEN;
		case 413:
			return M3TER_TOO_LARGE;
		default:
			return M3TER_REJECTED;
	}
}

/* Fill result from one HTTP answer */
static void
record_answer(M3terCallResult *result, M3terHttpResponse *resp)
{
	result->status = resp->status;
	result->body = resp->body;
	result->outcome = classify(resp->status);
	if (resp->retry_after_ms >= 0)
		result->retry_after_ms = resp->retry_after_ms;
	if (resp->status == 0)
		result->message = resp->transport_error;
	else if (result->outcome == M3TER_OK)
		result->message = NULL;
	else
	{
		result->message = m3ter_answer_message(resp->body);
		if (result->message == NULL)
			result->message = psprintf("HTTP %ld with an empty body", resp->status);
	}
}

/*
 * Send one paced request with the given Authorization value and record the
 * answer in result.  The credential is wiped and freed on every path.
 */
static void
send_once(M3terApi api, const char *method, const char *url, char *authorization,
		  const char *body, size_t body_len, M3terCallResult *result)
{
	M3terHttpResponse resp;

	m3ter_pace(api);
	PG_TRY();
	{
		m3ter_http_exchange(method, url, authorization, body, body_len, &resp);
	}
	PG_FINALLY();
	{
		explicit_bzero(authorization, strlen(authorization));
		pfree(authorization);
	}
	PG_END_TRY();
	result->requests++;
	record_answer(result, &resp);
}

/*
 * POST {api_url}/oauth/token with the Basic credentials and cache the token.
 * Returns M3TER_OK, M3TER_TRANSIENT, or M3TER_AUTH_FAILED.
 */
static M3terOutcome
fetch_token(M3terCallResult *result)
{
	static const char body[] = "{\"grant_type\":\"client_credentials\"}";
	char	   *url = psprintf("%s/oauth/token", api_base(M3TER_CONFIG_API));
	cJSON	   *root;
	cJSON	   *token;
	cJSON	   *expires;

	send_once(M3TER_CONFIG_API, "POST", url, m3ter_basic_credentials(),
			  body, sizeof(body) - 1, result);

	if (result->outcome == M3TER_TRANSIENT)
		return M3TER_TRANSIENT;
	if (result->outcome != M3TER_OK)
	{
		result->outcome = M3TER_AUTH_FAILED;
		return M3TER_AUTH_FAILED;
	}

	root = cJSON_Parse(result->body);
	token = root ? cJSON_GetObjectItemCaseSensitive(root, "access_token") : NULL;
	expires = root ? cJSON_GetObjectItemCaseSensitive(root, "expires_in") : NULL;
	if (!cJSON_IsString(token) || token->valuestring[0] == '\0')
	{
		result->outcome = M3TER_AUTH_FAILED;
		result->message = pstrdup("the token endpoint answered without an access_token");
		return M3TER_AUTH_FAILED;
	}
	m3ter_store_token(token->valuestring,
					  cJSON_IsNumber(expires) ? (int) expires->valuedouble : 3600);
	explicit_bzero(token->valuestring, strlen(token->valuestring));
	cJSON_Delete(root);
	return M3TER_OK;
}

/*
 * Make one API call under m3ter's rules (see the file header).  path starts
 * with '/'.  Never raises for an HTTP outcome; raises for missing settings
 * and interrupts.
 */
void
m3ter_call(M3terApi api, const char *method, const char *path,
		   const char *body, size_t body_len, int max_retries,
		   M3terCallResult *result)
{
	char	   *url = psprintf("%s%s", api_base(api), path);
	bool		fresh_token = false;
	int			attempt = 0;

	memset(result, 0, sizeof(*result));
	result->retry_after_ms = -1;

	for (;;)
	{
		const char *token = m3ter_cached_token();

		if (token == NULL)
		{
			M3terOutcome got = fetch_token(result);

			if (got == M3TER_TRANSIENT && attempt < max_retries)
			{
				m3ter_sleep_ms(m3ter_backoff_ms(attempt++, result->retry_after_ms));
				continue;
			}
			if (got != M3TER_OK)
				return;
			token = m3ter_cached_token();
			fresh_token = true;
		}

		send_once(api, method, url, psprintf("Bearer %s", token), body, body_len, result);

		if (result->outcome == M3TER_FORBIDDEN && !fresh_token)
		{
			/* maybe the token expired or was revoked: one fresh try */
			m3ter_forget_token();
			continue;
		}
		if (result->outcome == M3TER_TRANSIENT && attempt < max_retries)
		{
			m3ter_sleep_ms(m3ter_backoff_ms(attempt++, result->retry_after_ms));
			continue;
		}
		return;
	}
}

/* Raise the error that a failed call deserves; what names the call */
void
m3ter_raise_call_error(const M3terCallResult *result, const char *what)
{
	int			code;
	const char *hint;

	switch (result->outcome)
	{
		case M3TER_TRANSIENT:
			code = result->status == 0 ? ERRCODE_M3TER_NETWORK :
				result->status == 429 ? ERRCODE_M3TER_RATE_LIMITED : ERRCODE_M3TER_SERVER;
			hint = "The call was retried with growing delays; raise m3ter.max_retries or try again later.";
			break;
		case M3TER_FORBIDDEN:
			code = ERRCODE_M3TER_FORBIDDEN;
			hint = "Check m3ter.org_id and the Service User's permissions; the bearer token was already renewed once.";
			break;
		case M3TER_AUTH_FAILED:
			code = ERRCODE_M3TER_AUTH;
			hint = "Check m3ter.access_key_id and m3ter.api_secret.";
			break;
		case M3TER_TOO_LARGE:
			code = ERRCODE_M3TER_TOO_LARGE;
			hint = "Ask for less in one call.";
			break;
		case M3TER_REJECTED:
			code = result->status == 404 ? ERRCODE_M3TER_NOT_FOUND : ERRCODE_M3TER_BAD_REQUEST;
			hint = result->status == 404 ? "Check the ids and codes in the call." :
				"m3ter will not accept this request as it is; it was not retried.";
			break;
		default:
			elog(ERROR, "m3ter call did not fail");
	}

	if (result->status == 0)
		ereport(ERROR,
				(errcode(code),
				 errmsg("%s failed: m3ter could not be reached", what),
				 errdetail("%s", result->message ? result->message : "no detail"),
				 errhint("%s", hint)));
	else if (result->outcome == M3TER_AUTH_FAILED)
		ereport(ERROR,
				(errcode(code),
				 errmsg("%s failed: m3ter refused the credentials (HTTP %ld)", what, result->status),
				 errdetail("m3ter said: %s", result->message ? result->message : ""),
				 errhint("%s", hint)));
	else
		ereport(ERROR,
				(errcode(code),
				 errmsg("%s failed with HTTP status %ld", what, result->status),
				 errdetail("m3ter said: %s", result->message ? result->message : ""),
				 errhint("%s", hint)));
}
