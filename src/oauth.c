/*-------------------------------------------------------------------------
 *
 * oauth.c
 *		OAuth2 client-credentials tokens for m3ter.
 *
 * The bearer token is cached in TopMemoryContext of the process and is
 * reused until shortly before it expires.  The cache remembers which
 * credentials and token URL it was issued for (the secret only as a hash),
 * so changing a setting makes the next call fetch a new token.
 *
 * Neither the secret, the Basic credentials nor the token ever appear in
 * a message: callers report the status and the server's message only.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/base64.h"
#include "common/hashfn.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "m3ter.h"

/* Refresh this long before expiry, or at 90% of a short lifetime */
#define M3TER_TOKEN_MARGIN_S 60

static char *cached_token = NULL;
static TimestampTz cached_refresh_at = 0;
static char *cached_for_key = NULL;
static char *cached_for_url = NULL;
static uint32 cached_for_secret = 0;

/* A hash of the secret, so the cache can tell when it changed */
static uint32
secret_hash(void)
{
	return m3ter_credentials_fingerprint();
}

/* Forget the cached token; the next call fetches a new one */
void
m3ter_forget_token(void)
{
	if (cached_token != NULL)
	{
		explicit_bzero(cached_token, strlen(cached_token));
		pfree(cached_token);
		cached_token = NULL;
	}
	if (cached_for_key != NULL)
		pfree(cached_for_key);
	if (cached_for_url != NULL)
		pfree(cached_for_url);
	cached_for_key = cached_for_url = NULL;
	cached_refresh_at = 0;
}

/* The cached token if it is still good for the current settings, else NULL */
const char *
m3ter_cached_token(void)
{
	if (cached_token == NULL)
		return NULL;
	if (strcmp(cached_for_key, m3ter_access_key_id) != 0 ||
		strcmp(cached_for_url, m3ter_api_url) != 0 ||
		cached_for_secret != secret_hash() ||
		GetCurrentTimestamp() >= cached_refresh_at)
	{
		m3ter_forget_token();
		return NULL;
	}
	return cached_token;
}

/* Cache a token that the server says lives expires_in_s seconds */
void
m3ter_store_token(const char *token, int expires_in_s)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
	int			usable_s;

	m3ter_forget_token();
	cached_token = pstrdup(token);
	cached_for_key = pstrdup(m3ter_access_key_id);
	cached_for_url = pstrdup(m3ter_api_url);
	cached_for_secret = secret_hash();
	MemoryContextSwitchTo(old);

	if (expires_in_s > 2 * M3TER_TOKEN_MARGIN_S)
		usable_s = expires_in_s - M3TER_TOKEN_MARGIN_S;
	else
		usable_s = expires_in_s * 9 / 10;
	cached_refresh_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													(int64) usable_s * 1000);
}
