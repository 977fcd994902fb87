/*-------------------------------------------------------------------------
 *
 * catalog.c
 *		The catalog synced from m3ter (meters, account codes) and the
 *		checks it allows before a row is sent.
 *
 * m3ter answers {"result": "accepted"} before its enrichment stage, which
 * may still drop a measurement whose meter is unknown or whose data fields
 * are missing.  With m3ter.catalog_checks on, each claimed row is checked
 * against a copy of m3ter's meters, so such a row is marked 'failed' with a
 * reason naming the field before any request.  m3ter.unknown_accounts
 * says what an account code m3ter does not know does: send it (m3ter then
 * auto-creates "<code>-autocreated"), hold the row pending, or fail it.
 *
 * Invariants:
 *	- The checks run at send time only: nothing here is called on INSERT.
 *	- m3ter_catalog_prepare() runs once per claim transaction; it reads one
 *	  row of m3ter.catalog_state and reloads the in-memory copy (hash
 *	  tables in a process-lifetime memory context) only when the catalog's
 *	  version changed.  m3ter_catalog_verdict() runs per row with no SPI and
 *	  no allocation unless it has a reason to report.
 *	- A catalog never synced, or older than m3ter.catalog_max_age, is not
 *	  used: the check is skipped and the row counted as unchecked.  A stale
 *	  or unreachable catalog therefore never stalls delivery.
 *	- Counters live in shared memory when the library is preloaded, in the
 *	  process otherwise.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/formatting.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "outbox/catalog.h"
#include "client/client.h"
#include "client/pacing.h"
#include "client/request.h"
#include "ground/json.h"
#include "ground/measurement.h"
#include "ground/settings.h"
#include "ground/shmem.h"
#include "ground/spi_util.h"
#include "ground/standby.h"
#include "ground/version.h"

PG_FUNCTION_INFO_V1(m3ter_sync_catalog);
PG_FUNCTION_INFO_V1(m3ter_catalog_counters);
PG_FUNCTION_INFO_V1(m3ter_catalog_lookup_accounts);

/* Codes longer than this are never in the in-memory catalog */
#define CODE_KEYLEN 256

/* Account codes looked up per accounts request, and per sync */
#define ACCOUNTS_PER_REQUEST 50
#define ACCOUNTS_PER_SYNC 1000


typedef struct CatalogField
{
	char	   *code;
	int			map;			/* index into m3ter_map_names, -1 if none */
	bool		derived;
} CatalogField;

typedef struct CatalogMeter
{
	char		code[CODE_KEYLEN];
	int			nfields;
	CatalogField *fields;
} CatalogMeter;

typedef struct CatalogAccount
{
	char		code[CODE_KEYLEN];
} CatalogAccount;

typedef struct CatalogShared
{
	pg_atomic_uint64 failed;	/* rows failed by a check */
	pg_atomic_uint64 held;		/* rows held for an unknown account */
	pg_atomic_uint64 unchecked; /* rows sent unchecked: catalog stale */
} CatalogShared;

static CatalogShared *catalog_shared = NULL;
static CatalogShared catalog_local;

/* The in-memory copy and what this claim may check */
static MemoryContext catalog_cxt = NULL;
static HTAB *catalog_meters = NULL;
static HTAB *catalog_accounts = NULL;
static int64 loaded_version = -1;
static bool check_meters = false;
static bool check_accounts = false;
static bool count_unchecked = false;

/* Set up the counters once, when they are created */
static void
catalog_shmem_init(void *shared)
{
	CatalogShared *cs = shared;

	pg_atomic_init_u64(&cs->failed, 0);
	pg_atomic_init_u64(&cs->held, 0);
	pg_atomic_init_u64(&cs->unchecked, 0);
}

/* Share the counters across the cluster (while preloading) */
void
m3ter_catalog_shmem_install(void)
{
	m3ter_shmem_register("m3ter catalog", sizeof(CatalogShared), (void **) &catalog_shared,
						 catalog_shmem_init);
}

/* The counters: shared when preloaded, else this process's */
static CatalogShared *
counters(void)
{
	if (catalog_shared != NULL)
		return catalog_shared;
	if (pg_atomic_read_u64(&catalog_local.failed) == 0 &&
		pg_atomic_read_u64(&catalog_local.held) == 0 &&
		pg_atomic_read_u64(&catalog_local.unchecked) == 0)
	{
		pg_atomic_init_u64(&catalog_local.failed, 0);
		pg_atomic_init_u64(&catalog_local.held, 0);
		pg_atomic_init_u64(&catalog_local.unchecked, 0);
	}
	return &catalog_local;
}

/* The map index of a field category (MEASURE -> measure), or -1 */
static int
category_map(const char *category)
{
	int			k;

	for (k = 0; k < M3TER_NUM_MAPS; k++)
		if (pg_strcasecmp(category, m3ter_map_names[k]) == 0)
			return k;
	return -1;
}

/* Copy a code into a hash key; false when it cannot be a key */
static bool
make_key(char *key, const char *code)
{
	size_t		len = strlen(code);

	if (len >= CODE_KEYLEN)
		return false;
	memset(key, 0, CODE_KEYLEN);
	memcpy(key, code, len);
	return true;
}

/* Reload the in-memory catalog from m3ter.catalog_meters and catalog_accounts */
static void
load_catalog(int64 version)
{
	HASHCTL		ctl;
	MemoryContext old;
	uint64		i;
	int			rc;
	CatalogMeter *meter = NULL;

	if (catalog_cxt == NULL)
		catalog_cxt = AllocSetContextCreate(TopMemoryContext, "m3ter catalog",
											ALLOCSET_DEFAULT_SIZES);
	MemoryContextReset(catalog_cxt);
	catalog_meters = NULL;
	catalog_accounts = NULL;
	loaded_version = -1;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = CODE_KEYLEN;
	ctl.entrysize = sizeof(CatalogMeter);
	ctl.hcxt = catalog_cxt;
	catalog_meters = hash_create("m3ter catalog meters", 64, &ctl,
								 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	ctl.entrysize = sizeof(CatalogAccount);
	catalog_accounts = hash_create("m3ter catalog accounts", 256, &ctl,
								   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);

	/* one row per field, grouped by meter */
	rc = SPI_execute("SELECT m.code, f.f->>'code', f.f->>'category', f.derived, "
					 "count(*) OVER (PARTITION BY m.code) "
					 "FROM m3ter.catalog_meters m "
					 "LEFT JOIN LATERAL (SELECT d, false FROM jsonb_array_elements("
					 "  CASE jsonb_typeof(m.data_fields) WHEN 'array' THEN m.data_fields ELSE '[]' END) d "
					 "  UNION ALL SELECT d, true FROM jsonb_array_elements("
					 "  CASE jsonb_typeof(m.derived_fields) WHEN 'array' THEN m.derived_fields ELSE '[]' END) d"
					 ") AS f(f, derived) ON true "
					 "ORDER BY m.code", true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "m3ter catalog load failed: %s", SPI_result_code_string(rc));
	old = MemoryContextSwitchTo(catalog_cxt);
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *code = SPI_getvalue(tup, desc, 1);
		char	   *fcode = SPI_getvalue(tup, desc, 2);
		char	   *category = SPI_getvalue(tup, desc, 3);
		char	   *derived = SPI_getvalue(tup, desc, 4);
		char		key[CODE_KEYLEN];

		if (code == NULL || !make_key(key, code))
			continue;
		if (meter == NULL || strcmp(meter->code, key) != 0)
		{
			bool		found;

			meter = hash_search(catalog_meters, key, HASH_ENTER, &found);
			meter->nfields = 0;
			meter->fields = palloc0(Max(atoi(SPI_getvalue(tup, desc, 5)), 1) * sizeof(CatalogField));
		}
		if (fcode == NULL)
			continue;
		meter->fields[meter->nfields].code = pstrdup(fcode);
		meter->fields[meter->nfields].map = category ? category_map(category) : -1;
		meter->fields[meter->nfields].derived = derived && derived[0] == 't';
		meter->nfields++;
	}
	MemoryContextSwitchTo(old);
	SPI_freetuptable(SPI_tuptable);

	rc = SPI_execute("SELECT code FROM m3ter.catalog_accounts", true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "m3ter catalog load failed: %s", SPI_result_code_string(rc));
	for (i = 0; i < SPI_processed; i++)
	{
		char	   *code = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		char		key[CODE_KEYLEN];

		if (code != NULL && make_key(key, code))
			(void) hash_search(catalog_accounts, key, HASH_ENTER, NULL);
	}
	SPI_freetuptable(SPI_tuptable);
	loaded_version = version;
}

/*
 * Called once per claim transaction, before rows are read (SPI connected):
 * decide what this claim may check and reload the catalog if it changed.
 */
void
m3ter_catalog_prepare(void)
{
	char	   *sql;
	bool		isnull;
	int64		version;
	bool		meters_fresh;
	bool		accounts_fresh;
	Datum		value;
	int			rc;

	check_meters = false;
	check_accounts = false;
	count_unchecked = false;
	if (!m3ter_catalog_checks)
		return;
	count_unchecked = true;

	sql = psprintf("SELECT version, "
				   "coalesce(meters_synced_at > now() - make_interval(secs => %d), false), "
				   "coalesce(accounts_synced_at > now() - make_interval(secs => %d), false) "
				   "FROM m3ter.catalog_state",
				   m3ter_catalog_max_age_s, m3ter_catalog_max_age_s);
	rc = SPI_execute(sql, true, 1);
	pfree(sql);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		return;
	version = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	meters_fresh = !isnull && DatumGetBool(value);
	value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
	accounts_fresh = !isnull && DatumGetBool(value);
	SPI_freetuptable(SPI_tuptable);

	if (version != loaded_version || catalog_meters == NULL)
		load_catalog(version);

	check_meters = meters_fresh;
	check_accounts = accounts_fresh && m3ter_unknown_accounts != M3TER_ACCOUNTS_SEND;
	count_unchecked = !meters_fresh ||
		(m3ter_unknown_accounts != M3TER_ACCOUNTS_SEND && !accounts_fresh);
}

/* Find the field of a meter with this code, or NULL */
static const CatalogField *
meter_field(const CatalogMeter *meter, const char *code, int len)
{
	int			i;

	for (i = 0; i < meter->nfields; i++)
		if ((int) strlen(meter->fields[i].code) == len &&
			memcmp(meter->fields[i].code, code, len) == 0)
			return &meter->fields[i];
	return NULL;
}

/* Why a measurement's maps do not match its meter's data fields, or NULL */
static const char *
fields_verdict(const M3terMeasurement *m, const CatalogMeter *meter)
{
	int			i;
	int			k;

	/* every data field of the meter is present in the map of its category */
	for (i = 0; i < meter->nfields; i++)
	{
		const CatalogField *f = &meter->fields[i];
		Jsonb	   *map;

		if (f->derived || f->map < 0)
			continue;
		map = m->maps[f->map];
		if (map == NULL ||
			getKeyJsonValueFromContainer(&map->root, f->code, strlen(f->code), NULL) == NULL)
			return psprintf("%s.%s is missing: meter \"%s\" defines %s as a %s data field",
							m3ter_map_names[f->map], f->code, m->meter, f->code,
							asc_toupper(m3ter_map_names[f->map], strlen(m3ter_map_names[f->map])));
	}

	/* and every key is a data field of the meter, in the right map */
	for (k = 0; k < M3TER_NUM_MAPS; k++)
	{
		JsonbIterator *it;
		JsonbValue	v;
		JsonbIteratorToken tok;

		if (m->maps[k] == NULL)
			continue;
		it = JsonbIteratorInit(&m->maps[k]->root);
		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			const CatalogField *f;
			char	   *key;

			if (tok != WJB_KEY)
				continue;
			f = meter_field(meter, v.val.string.val, v.val.string.len);
			if (f != NULL && !f->derived && f->map == k)
				continue;
			key = pnstrdup(v.val.string.val, v.val.string.len);
			if (f == NULL)
				return psprintf("%s.%s is not a data field of meter \"%s\"",
								m3ter_map_names[k], key, m->meter);
			if (f->derived)
				return psprintf("%s.%s is a derived field of meter \"%s\", which m3ter calculates",
								m3ter_map_names[k], key, m->meter);
			return psprintf("%s.%s is in the wrong map: meter \"%s\" defines %s as a %s data field",
							m3ter_map_names[k], key, m->meter, key,
							f->map >= 0 ? asc_toupper(m3ter_map_names[f->map],
													  strlen(m3ter_map_names[f->map])) : "other");
		}
	}
	return NULL;
}

/*
 * Called per claimed row before it is written as JSON.  Returns NULL to
 * send it, else the reason (naming the field); *hold says whether the row
 * stays pending with that reason (true) or is marked failed now (false).
 */
const char *
m3ter_catalog_verdict(const M3terMeasurement *m, bool *hold)
{
	char		key[CODE_KEYLEN];
	const char *why;

	*hold = false;
	if (count_unchecked)
		pg_atomic_fetch_add_u64(&counters()->unchecked, 1);
	if (check_meters)
	{
		CatalogMeter *meter = make_key(key, m->meter) ?
			hash_search(catalog_meters, key, HASH_FIND, NULL) : NULL;

		if (meter == NULL)
		{
			pg_atomic_fetch_add_u64(&counters()->failed, 1);
			return psprintf("meter \"%s\" is not a meter in m3ter (the catalog synced from m3ter has no such code)",
							m->meter);
		}
		why = fields_verdict(m, meter);
		if (why != NULL)
		{
			pg_atomic_fetch_add_u64(&counters()->failed, 1);
			return why;
		}
	}
	if (check_accounts &&
		(!make_key(key, m->account) || hash_search(catalog_accounts, key, HASH_FIND, NULL) == NULL))
	{
		if (m3ter_unknown_accounts == M3TER_ACCOUNTS_HOLD)
		{
			*hold = true;
			pg_atomic_fetch_add_u64(&counters()->held, 1);
			return psprintf("held: account \"%s\" is not in the catalog synced from m3ter; the row is sent once a sync finds it, or after m3ter_release_held()",
							m->account);
		}
		pg_atomic_fetch_add_u64(&counters()->failed, 1);
		return psprintf("account \"%s\" is not in the catalog synced from m3ter (m3ter.unknown_accounts is fail)",
						m->account);
	}
	return NULL;
}

/* The schema that holds the extension's user functions, quoted */
static const char *
extension_schema(void)
{
	int			rc = SPI_execute("SELECT quote_ident(n.nspname) FROM pg_catalog.pg_extension e "
								 "JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace "
								 "WHERE e.extname = 'm3ter'", true, 1);

	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "the m3ter extension is not installed in this database");
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/* Copy m3ter's meters into m3ter.catalog_meters; returns how many */
static int64
sync_meters(void)
{
	char	   *sql;
	int64		n;
	bool		isnull;

	sql = psprintf("WITH l AS MATERIALIZED (SELECT x FROM %s.m3ter_list_meters() x WHERE x->>'code' IS NOT NULL), "
				   "gone AS (DELETE FROM m3ter.catalog_meters c WHERE NOT EXISTS "
				   "  (SELECT 1 FROM l WHERE l.x->>'code' = c.code)), "
				   "up AS (INSERT INTO m3ter.catalog_meters (code, id, data_fields, derived_fields, synced_at) "
				   "  SELECT x->>'code', x->>'id', coalesce(x->'dataFields', '[]'), "
				   "  coalesce(x->'derivedFields', '[]'), now() FROM l "
				   "  ON CONFLICT (code) DO UPDATE SET id = excluded.id, data_fields = excluded.data_fields, "
				   "  derived_fields = excluded.derived_fields, synced_at = excluded.synced_at RETURNING 1) "
				   "SELECT count(*) FROM up", extension_schema());
	if (SPI_execute(sql, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "m3ter catalog sync of meters failed");
	n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (SPI_execute("UPDATE m3ter.catalog_state SET version = version + 1, meters_synced_at = now(), "
					"last_error = NULL, last_error_at = NULL", false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "m3ter catalog state update failed");
	return n;
}

/* Record one account m3ter listed */
static void
store_account(const cJSON *account)
{
	const cJSON *code = cJSON_GetObjectItemCaseSensitive(account, "code");
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(account, "id");
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];
	char		nulls[2] = {' ', ' '};

	if (!cJSON_IsString(code))
		return;
	values[0] = CStringGetTextDatum(code->valuestring);
	if (cJSON_IsString(id))
		values[1] = CStringGetTextDatum(id->valuestring);
	else
		nulls[1] = 'n';
	if (SPI_execute_with_args("INSERT INTO m3ter.catalog_accounts (code, id, source, synced_at) "
							  "VALUES ($1, $2, 'm3ter', now()) ON CONFLICT (code) DO UPDATE "
							  "SET id = excluded.id, source = 'm3ter', synced_at = now()",
							  2, types, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "m3ter catalog account insert failed");
}

/* Store one account of a listing page (arg: the count of accounts found) */
static void
take_account(const cJSON *account, void *arg)
{
	store_account(account);
	(*(int64 *) arg)++;
}

/* Look up codes[0..n) through the accounts listing; returns accounts found */
static int64
lookup_accounts(char **codes, int n, int max_retries)
{
	StringInfoData query;
	char	   *next = NULL;
	int64		found = 0;
	List	   *seen = NIL;
	int			pages = 0;
	int			i;

	initStringInfo(&query);
	appendStringInfoString(&query, "/accounts?pageSize=100");
	for (i = 0; i < n; i++)
		appendStringInfo(&query, "&codes=%s", m3ter_url_encode(codes[i]));
	do
	{
		M3terCallResult res;
		char	   *path = next == NULL ? m3ter_org_path(query.data) :
			m3ter_org_path(psprintf("%s&nextToken=%s", query.data, m3ter_url_encode(next)));
		cJSON	   *page;

		m3ter_call(M3TER_CONFIG_API, "GET", path, NULL, 0, max_retries, &res);
		if (res.outcome != M3TER_OK)
			m3ter_raise_call_error(&res, "listing m3ter accounts");
		page = m3ter_parse_answer(res.body, "listing m3ter accounts");
		next = m3ter_consume_page(page, take_account, &found, &seen, ++pages, "listing m3ter accounts");
	} while (next != NULL);
	return found;
}

/*
 * Look up the account codes of pending rows that the catalog does not know
 * yet, and release rows held for accounts that are now known.
 */
static void
sync_accounts(int max_retries, int64 *looked_up, int64 *found, int64 *released)
{
	char	  **codes;
	uint64		n;
	uint64		i;

	if (SPI_execute("SELECT DISTINCT o.account FROM m3ter.outbox_pending o "
					"WHERE NOT EXISTS (SELECT 1 FROM m3ter.catalog_accounts a WHERE a.code = o.account) "
					"LIMIT " CppAsString2(ACCOUNTS_PER_SYNC), true, 0) != SPI_OK_SELECT)
		elog(ERROR, "m3ter catalog account query failed");
	n = SPI_processed;
	codes = palloc(Max(n, 1) * sizeof(char *));
	for (i = 0; i < n; i++)
		codes[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
	SPI_freetuptable(SPI_tuptable);

	*looked_up = n;
	for (i = 0; i < n; i += ACCOUNTS_PER_REQUEST)
		*found += lookup_accounts(codes + i, (int) Min(n - i, ACCOUNTS_PER_REQUEST), max_retries);

	if (SPI_execute("UPDATE m3ter.outbox o SET next_attempt_at = m3ter.due_now(o.created_at), error = NULL "
					"WHERE o.next_attempt_at > o.created_at AND o.status = 'pending' AND o.error LIKE 'held: %' "
					"AND EXISTS (SELECT 1 FROM m3ter.catalog_accounts a WHERE a.code = o.account)",
					false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "m3ter release of held rows failed");
	*released = SPI_processed;
	if (SPI_execute("UPDATE m3ter.catalog_state SET version = version + 1, accounts_synced_at = now()",
					false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "m3ter catalog state update failed");
}

/* sync_meters() with m3ter_list_meters() retrying max_retries times */
static int64
sync_meters_retrying(int max_retries)
{
	int			saved_retries = m3ter_max_retries;
	int64		meters;

	m3ter_max_retries = max_retries;
	PG_TRY();
	{
		meters = sync_meters();
	}
	PG_FINALLY();
	{
		m3ter_max_retries = saved_retries;
	}
	PG_END_TRY();
	return meters;
}

/*
 * Sync the catalog (SPI connected): meters always, accounts when asked.
 * Writes a JSON summary into out when it is not NULL.  Raises on failure.
 */
void
m3ter_catalog_sync(bool accounts, int max_retries, StringInfo out)
{
	int64		meters;
	int64		looked_up = 0;
	int64		found = 0;
	int64		released = 0;

	meters = sync_meters_retrying(max_retries);
	if (accounts)
		sync_accounts(max_retries, &looked_up, &found, &released);
	if (out != NULL)
		appendStringInfo(out, "{\"meters\":" INT64_FORMAT ",\"accounts_looked_up\":" INT64_FORMAT
						 ",\"accounts_found\":" INT64_FORMAT ",\"rows_released\":" INT64_FORMAT "}",
						 meters, looked_up, found, released);
}

/* Rows held for an unknown account so far (the cluster's, or this process's) */
uint64
m3ter_catalog_rows_held(void)
{
	return pg_atomic_read_u64(&counters()->held);
}

/*
 * Look up the account codes of pending rows that the catalog does not know
 * (SPI connected), and release the held rows whose accounts m3ter has:
 * an account created in m3ter just before its first usage is found within
 * a minute, not at the next catalog refresh.  Raises on failure.
 */
void
m3ter_catalog_lookup_unknown(int max_retries)
{
	int64		looked_up = 0;
	int64		found = 0;
	int64		released = 0;

	sync_accounts(max_retries, &looked_up, &found, &released);
}

/* Note a failed sync in m3ter.catalog_state (the sync itself was rolled back) */
void
m3ter_catalog_note_error(const char *message)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];

	values[0] = CStringGetTextDatum(message);
	(void) SPI_execute_with_args("UPDATE m3ter.catalog_state SET last_error = $1, last_error_at = now()",
								 1, types, values, NULL, false, 0);
}

/* m3ter_sync_catalog(accounts boolean DEFAULT NULL) RETURNS jsonb */
Datum
m3ter_sync_catalog(PG_FUNCTION_ARGS)
{
	bool		accounts = PG_ARGISNULL(0) ?
		(m3ter_unknown_accounts != M3TER_ACCOUNTS_SEND) : PG_GETARG_BOOL(0);
	MemoryContext caller = CurrentMemoryContext;
	StringInfoData out;
	Datum		result;

	m3ter_require_primary("m3ter_sync_catalog()");
	m3ter_require_installed_version();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	initStringInfo(&out);
	m3ter_catalog_sync(accounts, m3ter_max_retries, &out);
	MemoryContextSwitchTo(caller);
	result = DirectFunctionCall1(jsonb_in, CStringGetDatum(pstrdup(out.data)));
	SPI_finish();
	PG_RETURN_DATUM(result);
}

/*
 * m3ter.catalog_counters(OUT rows_failed_by_checks bigint, OUT rows_held bigint,
 *		OUT rows_unchecked bigint)
 */
Datum
m3ter_catalog_counters(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	values[0] = Int64GetDatum((int64) pg_atomic_read_u64(&counters()->failed));
	values[1] = Int64GetDatum((int64) pg_atomic_read_u64(&counters()->held));
	values[2] = Int64GetDatum((int64) pg_atomic_read_u64(&counters()->unchecked));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

/*
 * m3ter.catalog_lookup_accounts(codes text[]) RETURNS bigint
 *
 * Look up these account codes in m3ter and record the ones found (code and
 * id) in m3ter.catalog_accounts; returns how many were found.  Reconciliation
 * needs the ids of the accounts of accepted rows.
 */
Datum
m3ter_catalog_lookup_accounts(PG_FUNCTION_ARGS)
{
	ArrayType  *array = PG_GETARG_ARRAYTYPE_P(0);
	Datum	   *elems;
	bool	   *isnull;
	int			n;
	int			k = 0;
	char	  **codes;
	int64		found = 0;
	int			i;

	m3ter_require_primary("m3ter.catalog_lookup_accounts()");
	m3ter_require_installed_version();
	deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT, &elems, &isnull, &n);
	codes = palloc(Max(n, 1) * sizeof(char *));
	for (i = 0; i < n; i++)
		if (!isnull[i])
			codes[k++] = TextDatumGetCString(elems[i]);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	for (i = 0; i < k; i += ACCOUNTS_PER_REQUEST)
		found += lookup_accounts(codes + i, Min(k - i, ACCOUNTS_PER_REQUEST), m3ter_max_retries);
	if (k > 0 && SPI_execute("UPDATE m3ter.catalog_state SET version = version + 1", false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "m3ter catalog state update failed");
	SPI_finish();
	PG_RETURN_INT64(found);
}
