/*-------------------------------------------------------------------------
 *
 * settings.c
 *		Every m3ter.* setting: its variable, definition and hooks.
 *
 * This file is the ground of the extension: every layer reads the variables
 * below, and no hook here calls a module above it (a change that another
 * module must notice is counted, as m3ter_credentials_file_generation).
 *
 * Settings that only the postmaster can take (m3ter.max_databases) are
 * defined only while preloading, so loading
 * the library later in a session (CREATE EXTENSION, the first call of a
 * function) never meets a PGC_POSTMASTER definition.
 *
 * The credentials (m3ter.org_id is not secret, but m3ter.access_key_id and
 * m3ter.api_secret are) are PGC_SUSET with GUC_SUPERUSER_ONLY and
 * GUC_NO_SHOW_ALL, which keeps them out of pg_settings, pg_show_all_settings()
 * and SHOW ALL for every role.  GUC_SUPERUSER_ONLY still lets members of
 * pg_read_all_settings (pg_monitor among them) use SHOW and current_setting(),
 * so a show hook masks the value for anyone but a superuser.  A check hook
 * refuses them in ALTER ROLE / ALTER DATABASE ... SET and CREATE FUNCTION ...
 * SET, whose values land in catalogs every role can read.  The way to keep
 * them out of SQL and logs altogether is m3ter.credentials_file
 * (credentials.c), a file only the server's OS user can read.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <limits.h>
#include <sys/stat.h>

#include "access/xact.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/latch.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "ground/settings.h"
#include "ground/errors.h"

char	   *m3ter_org_id = NULL;
char	   *m3ter_access_key_id = NULL;
char	   *m3ter_api_secret = NULL;
char	   *m3ter_credentials_file = NULL;
char	   *m3ter_api_url = NULL;
char	   *m3ter_ingest_url = NULL;
int			m3ter_request_timeout_ms = 30000;
int			m3ter_connect_timeout_ms = 10000;
bool		m3ter_tls_verify = true;
int			m3ter_max_retries = 4;
int			m3ter_retry_max_delay_ms = 300000;
int			m3ter_max_requests_per_second = 50;
int			m3ter_max_requests_per_5min = 5000;
int			m3ter_requests_window_s = 300;
int			m3ter_max_in_flight = 32;
int			m3ter_claim_bytes = 4 * 1024 * 1024;
int			m3ter_max_attempts = 0;
int			m3ter_give_up_after_s = 7 * 86400;
int			m3ter_resend_window_s = 34 * 86400;
int			m3ter_batch_rows = 5000;
#ifdef M3TER_TEST_HOOKS
char	   *m3ter_test_fault_uid = NULL;
#endif
char	   *m3ter_database = NULL;
bool		m3ter_worker_enabled = true;
int			m3ter_worker_naptime_ms = 1000;
int			m3ter_worker_idle_naptime_ms = 10000;
int			m3ter_retention_s = 7 * 86400;
bool		m3ter_catalog_checks = false;
int			m3ter_unknown_accounts = M3TER_ACCOUNTS_SEND;
int			m3ter_catalog_max_age_s = 86400;
int			m3ter_catalog_refresh_interval_s = 3600;
int			m3ter_events_poll_interval_s = 60;
int			m3ter_max_databases = 32;
uint32		m3ter_credentials_file_generation = 0;
int			m3ter_reconcile_interval_s = 0;
int			m3ter_reconcile_lag_s = 86400;
int			m3ter_reconcile_days = 7;

static const struct config_enum_entry unknown_accounts_options[] = {
	{"send", M3TER_ACCOUNTS_SEND, false},
	{"hold", M3TER_ACCOUNTS_HOLD, false},
	{"fail", M3TER_ACCOUNTS_FAIL, false},
	{NULL, 0, false}
};

/* What SHOW and current_setting() give anyone but a superuser for a secret */
#define M3TER_MASK "********"

/* Show hook of m3ter.access_key_id: the value to superusers only */
static const char *
show_access_key_id(void)
{
	if (!superuser())
		return M3TER_MASK;
	return m3ter_access_key_id ? m3ter_access_key_id : "";
}

/* Show hook of m3ter.api_secret: the value to superusers only */
static const char *
show_api_secret(void)
{
	if (!superuser())
		return M3TER_MASK;
	return m3ter_api_secret ? m3ter_api_secret : "";
}

/*
 * Check of the credentials: refuse a value bound for a catalog that every
 * role can read (pg_db_role_setting through ALTER ROLE / ALTER DATABASE ...
 * SET, pg_proc.proconfig through CREATE FUNCTION ... SET, both validated with
 * PGC_S_TEST), or read back from one at session start.  The message is set
 * here so that PostgreSQL's own ("invalid value for parameter ...: <value>")
 * never repeats the credential to the client or the log.
 */
static bool
check_credential(const char *name, char **newval, GucSource source)
{
	if (*newval == NULL || (*newval)[0] == '\0')
		return true;
	switch (source)
	{
		case PGC_S_TEST:
		case PGC_S_GLOBAL:
		case PGC_S_DATABASE:
		case PGC_S_USER:
		case PGC_S_DATABASE_USER:
			GUC_check_errmsg("%s cannot be set per role, per database or per function", name);
			GUC_check_errdetail("Every role can read per-role, per-database and per-function settings.");
			GUC_check_errhint("Put the credentials in the file named by m3ter.credentials_file, or set them with ALTER SYSTEM.");
			return false;
		default:
			return true;
	}
}

/* Check hook of m3ter.access_key_id */
static bool
check_access_key_id(char **newval, void **extra, GucSource source)
{
	return check_credential("m3ter.access_key_id", newval, source);
}

/* Check hook of m3ter.api_secret */
static bool
check_api_secret(char **newval, void **extra, GucSource source)
{
	return check_credential("m3ter.api_secret", newval, source);
}

/* Check hook of m3ter.org_id: empty, or a UUID in its text form */
static bool
check_org_id(char **newval, void **extra, GucSource source)
{
	const char *v = *newval;
	int			i;

	if (v == NULL || v[0] == '\0')
		return true;
	for (i = 0; i < 36; i++)
	{
		bool		dash = (i == 8 || i == 13 || i == 18 || i == 23);

		if (v[i] == '\0' || (dash ? v[i] != '-' : !isxdigit((unsigned char) v[i])))
			break;
	}
	if (i == 36 && v[36] == '\0')
		return true;
	GUC_check_errmsg("m3ter.org_id must be a UUID");
	GUC_check_errdetail("The Organization id is 36 characters: hexadecimal digits in groups of 8-4-4-4-12 separated by dashes.");
	GUC_check_errhint("Copy it from the m3ter Console: Settings, Organization.");
	return false;
}

/* Assign hook of m3ter.credentials_file: the file is read again at next use */
static void
assign_credentials_file(const char *newval, void *extra)
{
	m3ter_credentials_file_generation++;
}

/* Check hook of m3ter.database: a list of database names */
static bool
check_database_list(char **newval, void **extra, GucSource source)
{
	char	   *copy = pstrdup(*newval);
	List	   *names = NIL;
	bool		valid = SplitIdentifierString(copy, ',', &names);

	list_free(names);
	pfree(copy);
	if (!valid)
		GUC_check_errdetail("List syntax is invalid: database names separated by commas are expected.");
	return valid;
}

/* Define the settings only the postmaster takes (while preloading) */
static void
define_preload_settings(void)
{
	DefineCustomIntVariable("m3ter.max_databases",
							"Sets how many databases m3ter keeps a worker and figures for.",
							"Each takes a slot in shared memory; one worker runs per database that has the extension.",
							&m3ter_max_databases,
							32,
							1,
							10000,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);
}

/* Define every m3ter.* setting (m3ter.max_databases only while preloading) */
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
							   check_org_id, NULL, NULL);

	DefineCustomStringVariable("m3ter.access_key_id",
							   "Sets the Access Key id of the m3ter Service User.",
							   "Readable by superusers only.",
							   &m3ter_access_key_id,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   check_access_key_id, NULL, show_access_key_id);

	DefineCustomStringVariable("m3ter.api_secret",
							   "Sets the Api Secret of the m3ter Service User.",
							   "Readable by superusers only.",
							   &m3ter_api_secret,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   check_api_secret, NULL, show_api_secret);

	DefineCustomStringVariable("m3ter.credentials_file",
							   "Sets the file that holds the Access Key id and Api Secret.",
							   "Lines access_key_id = ... and api_secret = ...; the file must be readable by the server's OS user only. When set, it takes the place of m3ter.access_key_id and m3ter.api_secret.",
							   &m3ter_credentials_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, assign_credentials_file, NULL);

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
							"Sets how many requests a second the cluster sends to m3ter at most.",
							"m3ter allows 50 a second per Organization; 0 turns this limit off. "
							"It is shared by every process when the library is preloaded, and lowered for a while after each 429.",
							&m3ter_max_requests_per_second,
							50,
							0,
							10000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.max_requests_per_5min",
							"Sets how many ingest requests the cluster sends in any window of m3ter.requests_window at most.",
							"m3ter allows 5,000 per rolling 5 minutes from one source address (the Config API 20,000; "
							"four times this setting); either is kept at 20,000 at most; 0 turns this limit off.",
							&m3ter_max_requests_per_5min,
							5000,
							0,
							1000000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.requests_window",
							"Sets the rolling window that m3ter.max_requests_per_5min counts requests over.",
							"m3ter's is 5 minutes; change it only if m3ter's changes. The pacer keeps half a second more.",
							&m3ter_requests_window_s,
							300,
							1,
							86400,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.max_in_flight",
							"Sets how many ingest requests a process keeps in flight at once.",
							"Over a real network one request at a time cannot reach m3ter's limits.",
							&m3ter_max_in_flight,
							32,
							1,
							256,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.claim_bytes",
							"Sets how many bytes of measurements (as JSON) one claim of outbox rows takes at most.",
							"With m3ter.batch_rows it bounds a delivery's memory whatever the size of the rows.",
							&m3ter_claim_bytes,
							4 * 1024 * 1024,
							M3TER_MAX_PAYLOAD_BYTES,
							INT_MAX / 2,
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.give_up_after",
							"Sets how old a pending outbox row may grow through transient faults before it is marked failed.",
							"429, 5xx and network faults keep rows pending until then; well inside m3ter's 35-day uid window.",
							&m3ter_give_up_after_s,
							7 * 86400,
							1,
							30 * 86400,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.resend_window",
							"Sets how old an outbox row may be when it is sent.",
							"m3ter keeps a uid for 35 days: an older row, pending again after a restore of an old backup, may have been accepted already and would be billed twice. Such a row is marked failed instead.",
							&m3ter_resend_window_s,
							34 * 86400,
							3600,
							35 * 86400,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.max_attempts",
							"Sets how many times an outbox row is sent before it is marked failed.",
							"0 (the default) sets no limit: rows give up by age (m3ter.give_up_after).",
							&m3ter_max_attempts,
							0,
							0,
							1000000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.batch_rows",
							"Sets how many outbox rows one claim takes at most.",
							"Claims go out in requests as full as m3ter's limits allow.",
							&m3ter_batch_rows,
							5000,
							1,
							100000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

#ifdef M3TER_TEST_HOOKS
	/* a test hook, only in builds for the test suite (test/lib.sh) */
	DefineCustomStringVariable("m3ter.test_fault_uid",
							   "Makes writing the outbox row with this uid as JSON raise an error (for tests).",
							   NULL,
							   &m3ter_test_fault_uid,
							   "",
							   PGC_SUSET,
							   GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);
#endif

	DefineCustomStringVariable("m3ter.database",
							   "Sets the databases whose m3ter.outbox a background worker drains.",
							   "A comma-separated list of database names; empty means every database that has the extension.",
							   &m3ter_database,
							   "",
							   PGC_SIGHUP,
							   GUC_LIST_INPUT,
							   check_database_list, NULL, NULL);


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
							7 * 86400,
							-1,
							INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("m3ter.catalog_checks",
							 "Sets whether rows are checked against the synced m3ter catalog before sending.",
							 "A row whose meter is unknown or whose fields do not match the meter's data fields is marked failed without a request.",
							 &m3ter_catalog_checks,
							 false,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomEnumVariable("m3ter.unknown_accounts",
							 "Sets what a row whose account code m3ter does not know does: send, hold or fail.",
							 "send: m3ter auto-creates the account; hold: the row stays pending until the account exists or m3ter_release_held(); fail: the row is marked failed. Needs m3ter.catalog_checks.",
							 &m3ter_unknown_accounts,
							 M3TER_ACCOUNTS_SEND,
							 unknown_accounts_options,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.catalog_max_age",
							"Sets the age after which the synced catalog is no longer used for checks.",
							"Rows are then sent unchecked (and counted) until the catalog is synced again.",
							&m3ter_catalog_max_age_s,
							86400,
							1,
							INT_MAX,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.catalog_refresh_interval",
							"Sets how often the background worker syncs the catalog while checks are on.",
							"0 leaves syncing to m3ter_sync_catalog().",
							&m3ter_catalog_refresh_interval_s,
							3600,
							0,
							INT_MAX / 1000,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.reconcile_interval",
							"Sets how often the background worker reconciles m3ter's usage totals with the outbox.",
							"0 (the default) leaves it to m3ter_reconcile(); delivery waits while it runs (one usage query a second).",
							&m3ter_reconcile_interval_s,
							0,
							0,
							INT_MAX / 1000,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.reconcile_lag",
							"Sets how recent usage a scheduled reconciliation leaves out.",
							"m3ter aggregates with some delay: the window ends at the start of the day this long ago.",
							&m3ter_reconcile_lag_s,
							86400,
							0,
							INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.reconcile_days",
							"Sets how many days a scheduled reconciliation looks back.",
							NULL,
							&m3ter_reconcile_days,
							7,
							1,
							366,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("m3ter.events_poll_interval",
							"Sets how often the background worker reads m3ter's ingest failure events.",
							"0 leaves polling to m3ter_poll_events().",
							&m3ter_events_poll_interval_s,
							60,
							0,
							INT_MAX / 1000,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);
	if (process_shared_preload_libraries_in_progress)
		define_preload_settings();
	MarkGUCPrefixReserved("m3ter");
}

/* Are the organization id or the credentials unset? */
static bool
settings_missing(void)
{
	if (m3ter_org_id == NULL || m3ter_org_id[0] == '\0')
		return true;
	if (m3ter_credentials_file != NULL && m3ter_credentials_file[0] != '\0')
		return false;
	return m3ter_access_key_id == NULL || m3ter_access_key_id[0] == '\0' ||
		m3ter_api_secret == NULL || m3ter_api_secret[0] == '\0';
}

/*
 * When a configuration file (postgresql.conf, or ALTER SYSTEM's
 * postgresql.auto.conf) was written in the last two seconds, after this
 * session last read the configuration: a reload may be on its way.  0 when
 * none was (a time ahead of the clock is no sign of one).
 */
static TimestampTz
config_written_lately(void)
{
	const char *files[] = {ConfigFileName, PG_AUTOCONF_FILENAME};
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz latest = 0;
	int			i;

	for (i = 0; i < lengthof(files); i++)
	{
		struct stat st;
		TimestampTz written;

		if (files[i] == NULL || stat(files[i], &st) != 0)
			continue;
		written = time_t_to_timestamptz(st.st_mtim.tv_sec) + st.st_mtim.tv_nsec / 1000;
		if (written > PgReloadTime && written > now - 2 * USECS_PER_SEC && written <= now)
			latest = Max(latest, written);
	}
	return latest;
}

/*
 * Take a reload of the configuration that this session has been signalled
 * but not yet taken, while the organization id or the credentials are
 * unset, or just after the configuration was written.  A session takes a
 * reload between statements, and the postmaster's signal comes a few
 * milliseconds after pg_reload_conf() returns: a script that sets them with
 * ALTER SYSTEM, reloads and calls m3ter in its next statement (the README's
 * Getting started pasted whole, or a wrong organization id put right) would
 * still see the old values.  So wait for the signal, once a statement,
 * before they are used: up to a second while they are unset, up to 200 ms
 * once a write (a write with no reload after it, ALTER SYSTEM staging a
 * change, costs each session that much once).  Taken here, the reload
 * applies every changed setting in the middle of the statement, as it would
 * have before the next one; only a session that calls m3ter right after a
 * change meets that.  Workers take reloads in their own loops.
 */
void
m3ter_settings_catch_up(void)
{
	static TimestampTz waited_in = 0;	/* the statement that waited */
	static TimestampTz waited_for = 0;	/* the write waited for */
	TimestampTz written;
	bool		missing;
	TimestampTz until;

	if (MyBackendType != B_BACKEND)
		return;
	missing = settings_missing();
	written = config_written_lately();
	if (!missing && (written == 0 || written == waited_for))
		return;
	if (!ConfigReloadPending && waited_in != GetCurrentStatementStartTimestamp())
	{
		waited_in = GetCurrentStatementStartTimestamp();
		if (written != 0)
			waited_for = written;
		until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), missing ? 1000 : 200);
		while (!ConfigReloadPending)
		{
			long		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), until);

			if (left <= 0)
				break;
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 Min(left, 10), PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
	}
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

/* The organization id, or an error that says how to set it */
const char *
m3ter_require_org_id(void)
{
	m3ter_settings_catch_up();
	if (m3ter_org_id == NULL || m3ter_org_id[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("m3ter.org_id is not set"),
				 errdetail("Every m3ter API path names the Organization."),
				 errhint("Set it as a superuser, for example: ALTER SYSTEM SET m3ter.org_id = '<your organization id>'; SELECT pg_reload_conf();")));
	return m3ter_org_id;
}

/* Does m3ter.database let this database have a worker? */
bool
m3ter_database_wanted(const char *name)
{
	char	   *copy;
	List	   *names = NIL;
	ListCell   *lc;
	bool		found = false;

	if (m3ter_database == NULL || m3ter_database[0] == '\0')
		return true;
	copy = pstrdup(m3ter_database);
	if (!SplitIdentifierString(copy, ',', &names))
		found = true;			/* cannot happen: the check hook refused it */
	foreach(lc, names)
	{
		if (strcmp((char *) lfirst(lc), name) == 0)
			found = true;
	}
	list_free(names);
	pfree(copy);
	return found;
}
