/*-------------------------------------------------------------------------
 *
 * m3ter.c
 *		Module entry point and settings of the m3ter extension.
 *
 * _PG_init only delegates: it defines the settings, and when the library
 * is loaded through shared_preload_libraries it also reserves shared
 * memory and registers the background worker (worker.c).
 *
 * The credentials (m3ter.org_id is not secret, but m3ter.access_key_id and
 * m3ter.api_secret are) are PGC_SUSET with GUC_SUPERUSER_ONLY and
 * GUC_NO_SHOW_ALL, so no other role can read them through SHOW,
 * current_setting() or pg_settings.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "m3ter.h"
#include "m3ter_json.h"

PG_MODULE_MAGIC;

char	   *m3ter_org_id = NULL;
char	   *m3ter_access_key_id = NULL;
char	   *m3ter_api_secret = NULL;
char	   *m3ter_api_url = NULL;
char	   *m3ter_ingest_url = NULL;
int			m3ter_request_timeout_ms = 30000;
int			m3ter_connect_timeout_ms = 10000;
bool		m3ter_tls_verify = true;
int			m3ter_max_retries = 4;
int			m3ter_retry_max_delay_ms = 300000;
int			m3ter_max_requests_per_second = 15;
int			m3ter_max_attempts = 25;
int			m3ter_batch_rows = 5000;
char	   *m3ter_database = NULL;
bool		m3ter_worker_enabled = true;
int			m3ter_worker_naptime_ms = 1000;
int			m3ter_worker_idle_naptime_ms = 10000;
int			m3ter_retention_s = -1;

void		_PG_init(void);

/* Load the module: settings always; shared state and worker when preloaded */
void
_PG_init(void)
{
	m3ter_define_settings();
	m3ter_json_install();

	if (process_shared_preload_libraries_in_progress)
	{
		m3ter_shmem_install();
		m3ter_catalog_shmem_install();
		m3ter_register_worker();
	}
}

/* Define every m3ter.* setting */
void
m3ter_define_settings(void)
{
	DefineCustomStringVariable("m3ter.org_id",
							   "Sets the m3ter Organization id (a UUID) used in API paths.",
							   NULL,
							   &m3ter_org_id,
							   "",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("m3ter.access_key_id",
							   "Sets the Access Key id of the m3ter Service User.",
							   "Readable by superusers only.",
							   &m3ter_access_key_id,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("m3ter.api_secret",
							   "Sets the Api Secret of the m3ter Service User.",
							   "Readable by superusers only.",
							   &m3ter_api_secret,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("m3ter.api_url",
							   "Sets the base URL of the m3ter Config API (also serves /oauth/token).",
							   NULL,
							   &m3ter_api_url,
							   "https://api.m3ter.com",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("m3ter.ingest_url",
							   "Sets the base URL of the m3ter Ingest API.",
							   NULL,
							   &m3ter_ingest_url,
							   "https://ingest.m3ter.com",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.request_timeout",
							"Sets the longest time one HTTP request to m3ter may take.",
							NULL,
							&m3ter_request_timeout_ms,
							30000,
							100,
							INT_MAX,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.connect_timeout",
							"Sets the longest time connecting to m3ter may take.",
							NULL,
							&m3ter_connect_timeout_ms,
							10000,
							100,
							INT_MAX,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("m3ter.tls_verify",
							 "Sets whether the TLS certificate and host name of m3ter are verified.",
							 "Only a superuser can turn verification off.",
							 &m3ter_tls_verify,
							 true,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.max_retries",
							"Sets how many times a synchronous call is retried after 429, 5xx or a network fault.",
							NULL,
							&m3ter_max_retries,
							4,
							0,
							100,
							PGC_USERSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.retry_max_delay",
							"Sets the longest delay between two retries.",
							"Delays grow as 1 s, 3 s, 9 s, ... up to this value; a longer Retry-After still wins.",
							&m3ter_retry_max_delay_ms,
							300000,
							1000,
							INT_MAX,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.max_requests_per_second",
							"Sets how many requests a second each process sends to each m3ter host at most.",
							"m3ter allows about 16 ingest requests a second from one host; 0 turns pacing off.",
							&m3ter_max_requests_per_second,
							15,
							0,
							10000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.max_attempts",
							"Sets how many times an outbox row is sent before it is marked failed.",
							NULL,
							&m3ter_max_attempts,
							25,
							1,
							10000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.batch_rows",
							"Sets how many outbox rows one drain transaction claims.",
							"They are sent in requests as full as m3ter's limits allow.",
							&m3ter_batch_rows,
							5000,
							1,
							100000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomStringVariable("m3ter.database",
							   "Sets the database whose m3ter.outbox the background worker drains.",
							   NULL,
							   &m3ter_database,
							   "postgres",
							   PGC_POSTMASTER,
							   0,
							   NULL, NULL, NULL);

	DefineCustomBoolVariable("m3ter.worker_enabled",
							 "Sets whether the background worker delivers the outbox.",
							 NULL,
							 &m3ter_worker_enabled,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.worker_naptime",
							"Sets how long the worker sleeps between drains while rows keep arriving.",
							"It also wakes at once when a transaction that inserted rows commits.",
							&m3ter_worker_naptime_ms,
							1000,
							10,
							INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.worker_idle_naptime",
							"Sets the longest sleep of an idle worker.",
							"An idle worker doubles its sleep from m3ter.worker_naptime up to this.",
							&m3ter_worker_idle_naptime_ms,
							10000,
							10,
							INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.retention",
							"Sets how long accepted outbox rows are kept before the worker deletes them.",
							"-1 keeps them.",
							&m3ter_retention_s,
							-1,
							-1,
							INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	m3ter_define_ingest_settings();
	MarkGUCPrefixReserved("m3ter");
}

/* The organization id, or an error that says how to set it */
const char *
m3ter_require_org_id(void)
{
	if (m3ter_org_id == NULL || m3ter_org_id[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("m3ter.org_id is not set"),
				 errdetail("Every m3ter API path names the Organization."),
				 errhint("Set it as a superuser, for example: ALTER SYSTEM SET m3ter.org_id = '<your organization id>'; SELECT pg_reload_conf();")));
	return m3ter_org_id;
}
