/*-------------------------------------------------------------------------
 *
 * oauth.c
 *		The credentials of the OAuth2 client-credentials grant.
 *
 * The token itself is cached by token.c.  Neither the secret nor the
 * Basic credentials ever appear in a message.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/base64.h"
#include "common/hashfn.h"

#include "m3ter.h"

/* A hash of the credentials, so a token cache can tell when they changed */
uint32
m3ter_credentials_fingerprint(void)
{
	const char *k = m3ter_access_key_id ? m3ter_access_key_id : "";
	const char *s = m3ter_api_secret ? m3ter_api_secret : "";

	return hash_combine(hash_bytes((const unsigned char *) k, strlen(k)),
						hash_bytes((const unsigned char *) s, strlen(s)));
}

/* Raise unless both credentials are set */
void
m3ter_require_credentials(void)
{
	if (m3ter_access_key_id == NULL || m3ter_access_key_id[0] == '\0' ||
		m3ter_api_secret == NULL || m3ter_api_secret[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("m3ter credentials are not set"),
				 errdetail("Both m3ter.access_key_id and m3ter.api_secret must be set to obtain a bearer token."),
				 errhint("As a superuser: ALTER SYSTEM SET m3ter.access_key_id = '...'; ALTER SYSTEM SET m3ter.api_secret = '...'; SELECT pg_reload_conf();")));
}

/*
 * The Authorization header value for the token request:
 * "Basic base64(access_key_id:api_secret)".  The caller wipes and frees it.
 */
char *
m3ter_basic_credentials(void)
{
	char	   *pair;
	char	   *header;
	int			pairlen;
	int			enclen;

	m3ter_require_credentials();
	pair = psprintf("%s:%s", m3ter_access_key_id, m3ter_api_secret);
	pairlen = strlen(pair);
	header = palloc(6 + pg_b64_enc_len(pairlen) + 1);
	memcpy(header, "Basic ", 6);
	enclen = pg_b64_encode(pair, pairlen, header + 6, pg_b64_enc_len(pairlen));
	header[6 + enclen] = '\0';
	explicit_bzero(pair, pairlen);
	pfree(pair);
	return header;
}
