/*-------------------------------------------------------------------------
 *
 * client.c
 *		The synchronous call to m3ter's APIs: a bearer token, one paced
 *		request, a fresh token once after 401/403, retries after transient
 *		faults (request.c classifies each answer).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <cjson/cJSON.h>

#include "fmgr.h"

#include "client/client.h"
#include "client/pacing.h"
#include "client/request.h"
#include "client/token.h"
#include "ground/json.h"
#include "ground/settings.h"

/*
 * After a transient fault, wait out its back-off and return true when
 * another attempt is due (retries left, and m3ter asks for no longer a
 * wait than m3ter.retry_max_delay)
 */
static bool
backed_off_for_retry(M3terCallResult *result, int *attempt, int max_retries)
{
	if (result->outcome != M3TER_TRANSIENT || *attempt >= max_retries || m3ter_waits_too_long(result, *attempt))
		return false;
	m3ter_sleep_ms(m3ter_backoff_ms((*attempt)++, result->retry_after_ms));
	result->retries = *attempt;
	return true;
}

/*
 * Make one API call synchronously under m3ter's rules (see the file
 * header), retrying transient faults up to max_retries times.  path starts
 * with '/'.  Never raises for an HTTP outcome; raises for missing settings
 * and interrupts.
 */
void
m3ter_call(M3terApi api, const char *method, const char *path,
		   const char *body, size_t body_len, int max_retries,
		   M3terCallResult *result)
{
	char	   *url = psprintf("%s%s", m3ter_api_base(api), path);
	bool		refreshed = false;
	int			attempt = 0;

	memset(result, 0, sizeof(*result));
	result->retry_after_ms = -1;

	for (;;)
	{
		char	   *token;
		M3terCallResult held = {.retry_after_ms = -1, .message = result->message};

		/* 429s that go on hold the cluster's sends: this session too, unless for long */
		if (m3ter_throttled_now(api, &held) && m3ter_waits_too_long(&held, attempt))
		{
			held.requests = result->requests;
			held.retries = result->retries;
			*result = held;
			return;
		}
		result->token_failed = false;	/* (says whose the last answer is) */
		token = m3ter_token_get(result);

		if (token == NULL)
		{
			if (backed_off_for_retry(result, &attempt, max_retries))
				continue;
			return;
		}

		m3ter_send_once(api, method, url, psprintf("Bearer %s", token), body, body_len, 0, result);

		if (result->outcome == M3TER_FORBIDDEN && !refreshed)
		{
			/* maybe the token expired or was revoked: one fresh try */
			m3ter_token_forget(token);
			refreshed = true;
		}
		else if (!backed_off_for_retry(result, &attempt, max_retries))
		{
			explicit_bzero(token, strlen(token));
			return;
		}
		explicit_bzero(token, strlen(token));
	}
}

/*
 * Make one call with m3ter.max_retries and return its answer parsed (the
 * caller frees it with cJSON_Delete), raising the call's error on failure;
 * what names the call in messages
 */
cJSON *
m3ter_call_answer(M3terApi api, const char *method, const char *path, const char *body,
				  const char *what)
{
	M3terCallResult res;

	m3ter_call(api, method, path, body, body ? strlen(body) : 0, m3ter_max_retries, &res);
	if (res.outcome != M3TER_OK)
		m3ter_raise_call_error(&res, what);
	return m3ter_parse_answer(res.body, what);
}

/* m3ter_call_answer() with the answer as a jsonb Datum (the cJSON freed) */
Datum
m3ter_call_jsonb(M3terApi api, const char *method, const char *path, const char *body,
				 const char *what)
{
	cJSON	   *volatile answer = m3ter_call_answer(api, method, path, body, what);
	volatile Datum result = (Datum) 0;

	PG_TRY();
	{
		result = m3ter_cjson_to_jsonb(answer);
	}
	PG_FINALLY();
	{
		cJSON_Delete(answer);
	}
	PG_END_TRY();
	return result;
}
