/*-------------------------------------------------------------------------
 *
 * version.c
 *		The installed SQL version of the extension against the library's.
 *
 * The C code relies on the SQL objects of the versions listed below (the
 * outbox's columns, the functions' signatures).  When a database still has
 * another version installed (an older one after the library was upgraded
 * and ALTER EXTENSION m3ter UPDATE not yet run, or one this library does not
 * know), the SQL-callable functions refuse with an error that says so
 * instead of misbehaving, and the worker waits.
 *
 * pg_extension has no syscache, so the version is read with an index scan
 * and kept for the rest of the statement: the cache is keyed by the
 * command id and dropped at the end of every transaction, so an ALTER
 * EXTENSION is seen by the next statement.  While CREATE or ALTER EXTENSION
 * runs its script the check is skipped.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "ground/version.h"

/* The SQL versions this library works with */
static const char *const supported_versions[] = {"1.3", NULL};

static bool cache_valid = false;
static CommandId cache_cid = InvalidCommandId;
static char cached_version[NAMEDATALEN];	/* "" when not installed */
static bool callback_registered = false;

/* Drop the cached version at the end of each transaction */
static void
version_xact_callback(XactEvent event, void *arg)
{
	cache_valid = false;
}

/* extversion of m3ter in this database, into cached_version ("" if absent) */
static void
read_installed_version(void)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;

	cached_version[0] = '\0';
	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum("m3ter"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
		{
			char	   *v = text_to_cstring(DatumGetTextPP(d));

			strlcpy(cached_version, v, sizeof(cached_version));
			pfree(v);
		}
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
}

/* The installed version, read at most once a statement */
static const char *
installed_version(void)
{
	CommandId	cid;

	if (!IsTransactionState())
		elog(ERROR, "the installed m3ter version can only be read in a transaction");
	if (!callback_registered)
	{
		RegisterXactCallback(version_xact_callback, NULL);
		callback_registered = true;
	}
	cid = GetCurrentCommandId(false);
	if (!cache_valid || cache_cid != cid)
	{
		read_installed_version();
		cache_cid = cid;
		cache_valid = true;
	}
	return cached_version;
}

/* Is v one of the versions this library supports? */
static bool
supported(const char *v)
{
	int			i;

	for (i = 0; supported_versions[i] != NULL; i++)
		if (strcmp(v, supported_versions[i]) == 0)
			return true;
	return false;
}

/*
 * Is version v newer than every version this library supports?  Versions
 * are "major.minor" (a part that is not a number counts as 0).
 */
static bool
newer_than_library(const char *v)
{
	const char *newest = supported_versions[0];
	long		major = strtol(v, NULL, 10);
	long		newest_major = strtol(newest, NULL, 10);
	const char *dot = strchr(v, '.');
	const char *newest_dot = strchr(newest, '.');

	if (major != newest_major)
		return major > newest_major;
	return (dot ? strtol(dot + 1, NULL, 10) : 0) > (newest_dot ? strtol(newest_dot + 1, NULL, 10) : 0);
}

/*
 * For the worker: the state of m3ter in this database; unless it is
 * supported, *why (palloc'd) says what is wrong.  Needs a transaction.
 */
M3terVersionState
m3ter_installed_version_state(char **why)
{
	const char *v;

	if (creating_extension)
		return M3TER_VERSION_OK;
	v = installed_version();
	if (v[0] == '\0')
	{
		if (why)
			*why = psprintf("extension m3ter is not installed in database \"%s\"",
							get_database_name(MyDatabaseId));
		return M3TER_VERSION_ABSENT;
	}
	if (supported(v))
		return M3TER_VERSION_OK;
	if (newer_than_library(v))
	{
		if (why)
			*why = psprintf("the installed SQL version %s of extension m3ter is newer than its library (version %s); install the library of version %s and restart PostgreSQL",
							v, supported_versions[0], v);
		return M3TER_VERSION_NEWER;
	}
	if (why)
		*why = psprintf("the installed SQL version %s of extension m3ter is older than its library (version %s); run ALTER EXTENSION m3ter UPDATE",
						v, supported_versions[0]);
	return M3TER_VERSION_OLDER;
}

/* For SQL-callable functions: raise unless the installed version is supported */
void
m3ter_require_installed_version(void)
{
	M3terVersionState state = m3ter_installed_version_state(NULL);
	const char *v;

	if (state == M3TER_VERSION_OK)
		return;
	v = installed_version();
	if (state == M3TER_VERSION_ABSENT)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension m3ter is not installed in this database"),
				 errhint("Run CREATE EXTENSION m3ter.")));
	if (state == M3TER_VERSION_NEWER)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension m3ter has version %s installed, which its library does not support", v),
				 errdetail("The m3ter library loaded is of version %s, older than the SQL objects.", supported_versions[0]),
				 errhint("Install the m3ter library of version %s and restart PostgreSQL.", v)));
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("extension m3ter has version %s installed, which its library does not support", v),
			 errdetail("The m3ter library works with SQL version %s.", supported_versions[0]),
			 errhint("Run ALTER EXTENSION m3ter UPDATE in this database.")));
}

/*
 * Take a share lock on the extension for this transaction, as the worker
 * does before it touches the extension's tables: a DROP EXTENSION (which
 * locks the extension first) then either waits for the worker's short
 * transaction or makes it wait, and never deadlocks with it over the
 * tables.  Returns false when the extension is not installed (any more).
 */
bool
m3ter_lock_extension(void)
{
	Oid			extoid = get_extension_oid("m3ter", true);

	if (!OidIsValid(extoid))
		return false;
	LockDatabaseObject(ExtensionRelationId, extoid, 0, AccessShareLock);
	return OidIsValid(get_extension_oid("m3ter", true));
}
