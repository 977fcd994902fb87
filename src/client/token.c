/*-------------------------------------------------------------------------
 *
 * token.c
 *		The OAuth2 bearer token, one per cluster.
 *
 * m3ter_token_get() returns a bearer token for the current credentials,
 * fetching one (client-credentials grant) only when there is none, it is
 * about to expire (60 s before, or at 90% of a short lifetime), or the
 * credentials or the token URL changed.  With the library preloaded the
 * token lives in shared memory and one fetch serves every process: the
 * process that finds the token due for renewal marks the fetch as its
 * own, the others keep using the still valid token (or wait for the new
 * one when there is none).  Without the preload each process keeps its
 * own copy in the same structure.
 *
 * So does the wait while the token endpoint fails: each failure after the
 * last wait ended makes it grow (m3ter's rule: 1 s, 3 s, 9 s, ...), and a
 * process that starts meanwhile (a new worker, CALL m3ter.flush()) waits
 * out what is left instead of asking again at once.  A token had ends it.
 *
 * The secret is never stored: the cache remembers the credentials it was
 * issued for only as a hash.  Neither the token nor the credentials ever
 * appear in a message.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <cjson/cJSON.h>

#include "common/hashfn.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/timestamp.h"

#include "client/token.h"
#include "client/credentials.h"
#include "client/pacing.h"
#include "client/request.h"
#include "ground/settings.h"
#include "ground/shmem.h"

/* Tokens longer than this are not cached across processes */
#define M3TER_MAX_TOKEN 8192
#define M3TER_TOKEN_MARGIN_S 60
/* expires_in is clamped to [1 s, 1 day] */
#define M3TER_TOKEN_MAX_LIFE_S 86400
/*
 * An ask to renew a token that still serves waits this long at most (and
 * half the time the token has left): the process that asks waits for it,
 * and an endpoint that hangs would hold its call or its rows for all of
 * m3ter.request_timeout
 */
#define M3TER_RENEWAL_TIMEOUT_MS 2000

typedef struct TokenCache
{
	slock_t		mutex;
	uint32		fingerprint;	/* credentials and token URL it was issued for */
	TimestampTz refresh_at;		/* renew from then on */
	TimestampTz expires_at;		/* unusable from then on */
	TimestampTz fetching_until; /* a process is fetching a new one until then */
	uint32		failed_fingerprint; /* what the failures below were for */
	int			failures;		/* the token endpoint's failures in a row */
	TimestampTz retry_at;		/* ... ask it again from then on */
	TimestampTz failed_at;		/* the last failure, */
	long		failed_status;	/* ... its HTTP status (0: no answer) */
	char		failure[200];	/* ... and what it said */
	int			len;			/* 0: no token */
	char		token[M3TER_MAX_TOKEN];
} TokenCache;

static TokenCache *shared_cache = NULL;
static TokenCache local_cache;

/* Set up the shared cache once, when it is created */
static void
token_shmem_init(void *shared)
{
	SpinLockInit(&((TokenCache *) shared)->mutex);
}

/* Share the token across the cluster (while preloading) */
void
m3ter_token_shmem_install(void)
{
	m3ter_shmem_register("m3ter token", sizeof(TokenCache), (void **) &shared_cache,
						 token_shmem_init);
}

static TokenCache *
lock_cache(void)
{
	if (shared_cache != NULL)
	{
		SpinLockAcquire(&shared_cache->mutex);
		return shared_cache;
	}
	return &local_cache;
}

static void
unlock_cache(void)
{
	if (shared_cache != NULL)
		SpinLockRelease(&shared_cache->mutex);
}

/* A hash of what the token depends on: credentials and token URL */
static uint32
fingerprint(void)
{
	uint32		h = m3ter_credentials_fingerprint();

	return hash_combine(h, string_hash(m3ter_api_url, strlen(m3ter_api_url)));
}

/*
 * The grant goes as JSON (m3ter's SDKs) or form-encoded (RFC 6749, m3ter's
 * curl example); an endpoint that refuses one as a bad request (400, 415)
 * is asked once more in the other, which is then kept for this process.
 */
static bool grant_as_form = false;

/* POST the client-credentials grant to url, in the encoding kept */
static void
send_grant(const char *url, int timeout_ms, M3terCallResult *result)
{
	static const char json_grant[] = "{\"grant_type\":\"client_credentials\"}";
	static const char form_grant[] = "grant_type=client_credentials";

	m3ter_send_once(M3TER_CONFIG_API, "POST", url, m3ter_basic_credentials(),
					grant_as_form ? form_grant : json_grant,
					grant_as_form ? sizeof(form_grant) - 1 : sizeof(json_grant) - 1, timeout_ms, result);
}

/*
 * POST {api_url}/oauth/token with the Basic credentials, waiting timeout_ms
 * for the answer (0: m3ter.request_timeout).  Returns the token (palloc'd)
 * and its lifetime, or NULL with result describing the failure
 * (M3TER_TRANSIENT, M3TER_AUTH_FAILED for a refusal, or M3TER_UNEXPECTED when
 * something other than m3ter's token endpoint answered).
 */
static char *
fetch_token(int timeout_ms, M3terCallResult *result, int *expires_in_s)
{
	char	   *url = psprintf("%s/oauth/token", m3ter_api_base(M3TER_CONFIG_API));
	cJSON	   *root;
	cJSON	   *token;
	cJSON	   *expires;
	char	   *copy = NULL;

	send_grant(url, timeout_ms, result);
	if (result->status == 400 || result->status == 415)
	{
		grant_as_form = !grant_as_form;
		send_grant(url, timeout_ms, result);
		if (result->status == 400 || result->status == 415)
			grant_as_form = !grant_as_form;	/* not the encoding: as before */
	}
	if (result->outcome == M3TER_TRANSIENT)
		return NULL;
	if (result->outcome != M3TER_OK)
	{
		/* a refusal is the credentials'; a page or redirect not m3ter's, the URL's */
		if (result->outcome != M3TER_UNEXPECTED)
			result->outcome = M3TER_AUTH_FAILED;
		return NULL;
	}

	root = cJSON_Parse(result->body);
	PG_TRY();
	{
		token = root ? cJSON_GetObjectItemCaseSensitive(root, "access_token") : NULL;
		expires = root ? cJSON_GetObjectItemCaseSensitive(root, "expires_in") : NULL;
		if (cJSON_IsString(token) && token->valuestring[0] != '\0')
		{
			double		life = cJSON_IsNumber(expires) ? expires->valuedouble : 3600;

			/* clamped: a huge or negative lifetime must not overflow */
			*expires_in_s = (int) Max(1.0, Min(life, (double) M3TER_TOKEN_MAX_LIFE_S));
			copy = pstrdup(token->valuestring);
			explicit_bzero(token->valuestring, strlen(token->valuestring));
		}
	}
	PG_FINALLY();
	{
		cJSON_Delete(root);		/* cJSON allocates with malloc */
	}
	PG_END_TRY();
	explicit_bzero(result->body, strlen(result->body));
	if (copy == NULL)
	{
		/* a 2xx without a token: something other than m3ter answered */
		result->outcome = M3TER_UNEXPECTED;
		result->message = pstrdup("the token endpoint answered without an access_token");
	}
	return copy;
}

/* Keep a fetched token in the cache */
static void
store(uint32 fp, const char *token, int expires_in_s)
{
	TimestampTz now = GetCurrentTimestamp();
	int			len = strlen(token);
	int64		usable_ms;
	TokenCache *c;

	if (expires_in_s > 2 * M3TER_TOKEN_MARGIN_S)
		usable_ms = (int64) (expires_in_s - M3TER_TOKEN_MARGIN_S) * 1000;
	else
		usable_ms = (int64) expires_in_s * 900;

	c = lock_cache();
	c->fetching_until = 0;
	c->failures = 0;
	c->retry_at = 0;
	if (len < M3TER_MAX_TOKEN)
	{
		explicit_bzero(c->token, c->len);
		memcpy(c->token, token, len + 1);
		c->len = len;
		c->fingerprint = fp;
		c->refresh_at = now + usable_ms * 1000;
		c->expires_at = now + (int64) expires_in_s * USECS_PER_SEC;
	}
	unlock_cache();
	if (len >= M3TER_MAX_TOKEN)
	{
		static bool said = false;

		/* once a process: every call of it now fetches a token of its own */
		if (!said)
			ereport(LOG,
					(errmsg("m3ter's bearer token is %d bytes, too long to keep: each call fetches a new one", len),
					 errdetail("Tokens of up to %d bytes are kept until they expire.", M3TER_MAX_TOKEN - 1)));
		said = true;
	}
}

/*
 * The token endpoint failed (c locked; result its answer): the wait grows
 * by one step if the last one had ended, and stays as it is if another
 * process's failure began it
 */
static void
note_failure(TokenCache *c, uint32 fp, const M3terCallResult *result)
{
	TimestampTz now = GetCurrentTimestamp();

	c->failed_at = now;
	c->failed_status = result->status;
	strlcpy(c->failure, result->message ? result->message : "no answer", sizeof(c->failure));

	if (c->failed_fingerprint != fp)
	{
		c->failed_fingerprint = fp;
		c->failures = 0;
		c->retry_at = 0;
	}
	if (c->retry_at <= now)
	{
		c->retry_at = TimestampTzPlusMilliseconds(now, m3ter_backoff_ms(c->failures, result->retry_after_ms));
		c->failures++;
	}
}

/* Is the cached token for fp and still valid at now (c locked)? */
static bool
token_valid(const TokenCache *c, uint32 fp, TimestampTz now)
{
	return c->len > 0 && c->fingerprint == fp && now < c->expires_at;
}

/*
 * The cached token copied into buf (M3TER_MAX_TOKEN bytes) if it is for fp
 * and still valid at now (c locked: no palloc here)
 */
static bool
copy_if_valid(TokenCache *c, uint32 fp, TimestampTz now, char *buf)
{
	if (!token_valid(c, fp, now))
		return false;
	memcpy(buf, c->token, c->len + 1);
	return true;
}

/* A palloc'd copy of what copy_if_valid() found (NULL: nothing), buf wiped */
static char *
take_copy(bool found, char *buf)
{
	char	   *copy = found ? pstrdup(buf) : NULL;

	explicit_bzero(buf, M3TER_MAX_TOKEN);
	return copy;
}

/*
 * A bearer token for the current settings (palloc'd; the caller wipes it),
 * or NULL with *result saying why none could be had.
 */
char *
m3ter_token_get(M3terCallResult *result)
{
	uint32		fp = fingerprint();
	char		buf[M3TER_MAX_TOKEN];
	bool		found;
	TimestampTz waited_since = 0;	/* for another process's fetch */
	volatile int timeout_ms;

	for (;;)
	{
		TimestampTz now = GetCurrentTimestamp();
		TokenCache *c = lock_cache();
		bool		valid = token_valid(c, fp, now);
		bool		fresh = valid && now < c->refresh_at;
		bool		fetching = c->fetching_until > now;
		bool		waiting = c->failed_fingerprint == fp && c->retry_at > now;
		char	   *token = NULL;
		int			expires_in_s = 0;

		/* one due for renewal serves while another process fetches, or the endpoint failed */
		if (fresh || (valid && (fetching || waiting)))
		{
			found = copy_if_valid(c, fp, now, buf);
			unlock_cache();
			return take_copy(found, buf);
		}
		if (fetching)
		{
			/* another process is fetching one: wait for it */
			if (waited_since == 0)
				waited_since = now;
			unlock_cache();
			m3ter_sleep_ms(10);
			continue;
		}
		if (waited_since != 0 && c->failed_fingerprint == fp && c->failed_at >= waited_since)
		{
			/* the fetch waited for failed: its answer is this one's too, not another ask */
			result->outcome = M3TER_TRANSIENT;
			result->status = c->failed_status;
			strlcpy(buf, c->failure, sizeof(c->failure));
			unlock_cache();
			result->message = pstrdup(buf);
			result->token_failed = true;
			return NULL;
		}
		c->fetching_until = now + (int64) (m3ter_connect_timeout_ms + m3ter_request_timeout_ms) * 1000;
		/* a renewal: the token at hand serves after a short wait for the new one */
		timeout_ms = valid ? (int) Min(M3TER_RENEWAL_TIMEOUT_MS, (c->expires_at - now) / 2000 + 1) : 0;
		unlock_cache();

		PG_TRY();
		{
			token = fetch_token(timeout_ms, result, &expires_in_s);
		}
		PG_CATCH();
		{
			c = lock_cache();
			c->fetching_until = 0;
			unlock_cache();
			PG_RE_THROW();
		}
		PG_END_TRY();

		if (token == NULL)
		{
			c = lock_cache();
			c->fetching_until = 0;
			if (result->outcome == M3TER_TRANSIENT)
				note_failure(c, fp, result);
			found = copy_if_valid(c, fp, GetCurrentTimestamp(), buf);
			unlock_cache();
			token = take_copy(found, buf);
			if (token != NULL)
				result->outcome = M3TER_OK; /* the one due for renewal serves meanwhile */
			else
				result->token_failed = true;
			return token;
		}
		store(fp, token, expires_in_s);
		return token;
	}
}

/*
 * Until when a wait for the failed token endpoint holds (0: it does not):
 * the process's own wait (own_retry_at), or the cluster's too (cluster) if
 * that ends later.  A token had since ends both; one due for renewal that
 * still serves holds neither (m3ter_token_get() asks to renew it on the
 * wait's schedule).  Neither lasts longer than m3ter.retry_max_delay from
 * now (a lower setting, a reload, shortens it).
 */
TimestampTz
m3ter_token_wait(TimestampTz own_retry_at, bool cluster)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz latest = now + (int64) m3ter_retry_max_delay_ms * 1000;
	TimestampTz until = Min(own_retry_at, latest);
	uint32		fp;
	TokenCache *c = lock_cache();
	bool		failing = c->failures > 0;

	/* the common case, no failure: no look at the credentials (a file's stat) */
	unlock_cache();
	if (!failing && until <= now)
		return 0;
	fp = fingerprint();
	c = lock_cache();
	if (token_valid(c, fp, now) && now < c->refresh_at)
	{
		c->failures = 0;		/* a token had since ends the wait */
		c->retry_at = 0;
		until = 0;
	}
	else if (token_valid(c, fp, now))
		until = 0;				/* the old one serves meanwhile: sends go */
	else if (cluster && c->failed_fingerprint == fp)
	{
		/* shortened where it is kept: a cap counted from each look would never end */
		c->retry_at = Min(c->retry_at, latest);
		until = Max(until, c->retry_at);
	}
	unlock_cache();
	return until > now ? until : 0;
}

/*
 * When the token endpoint last failed, with no token had since and none at
 * hand (0: it has not, or one due for renewal still serves), and what it
 * said (into buf, when given)
 */
TimestampTz
m3ter_token_failure(char *buf, size_t len)
{
	TimestampTz now = GetCurrentTimestamp();
	TokenCache *c = lock_cache();
	TimestampTz at = c->failures > 0 && !(c->len > 0 && now < c->expires_at) ? c->failed_at : 0;

	if (at != 0 && buf != NULL)
		strlcpy(buf, c->failure, len);
	unlock_cache();
	return at;
}

/* Drop the cached token if it is the given one (m3ter refused it) */
void
m3ter_token_forget(const char *token)
{
	TokenCache *c = lock_cache();

	if (c->len > 0 && strcmp(c->token, token) == 0)
	{
		explicit_bzero(c->token, c->len);
		c->len = 0;
	}
	unlock_cache();
}

