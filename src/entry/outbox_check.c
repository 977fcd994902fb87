/*-------------------------------------------------------------------------
 *
 * outbox_check.c
 *		The CHECK constraint of m3ter.outbox: one C call per row.
 *
 * m3ter.check_usage() refuses a bad usage row at INSERT (and UPDATE) with
 * an error that names the field, using the same rules as m3ter_submit()
 * (measurement.c).  It allocates nothing unless it raises.
 *
 * It is also how the worker learns of new rows: a row that passes marks
 * the transaction, and its commit sets the worker's latch (slots.c).  A
 * CHECK is evaluated for every written row anyway, so this costs no
 * trigger.  A spurious wake (say, after a flush's status updates)
 * only makes the worker look for due rows once more.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "ground/measurement.h"
#include "outbox/slots.h"

PG_FUNCTION_INFO_V1(m3ter_check_usage);

/* Argument positions of m3ter.check_usage() */
#define ARG_UID			0
#define ARG_METER		1
#define ARG_ACCOUNT		2
#define ARG_TS			3
#define ARG_ETS			4
#define ARG_FIRST_MAP	5

/* The hint for a bad map, by kind (M3terMapKind) */
static const char *const map_hints[] = {
	"measure, cost and income map names to numbers, such as {\"requests\": 3}.",
	"who, where, what, other and metadata map names to strings, such as {\"region\": \"eu-west-1\"}."
};

/*
 * Raise the error for a bad column; what, when not NULL, says which value or
 * key (it follows the column in the message).
 */
static void
bad_column(const char *column, const char *what, const char *why, const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_CHECK_VIOLATION),
			 what ? errmsg("invalid %s for m3ter: %s", column, what) :
			 errmsg("invalid %s for m3ter", column),
			 errdetail("%s", why),
			 errhint("%s", hint)));
}

/*
 * A required column left NULL.  The columns carry no NOT NULL constraint of
 * their own: PostgreSQL's would answer with the whole row in its detail.
 */
static void
missing_column(const char *column, const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_NOT_NULL_VIOLATION),
			 errmsg("invalid %s for m3ter: it is missing", column),
			 errdetail("m3ter cannot take a usage row without its %s.", column),
			 errhint("%s", hint)));
}

/* A code column: required, and the rules of m3ter_check_code() */
static void
check_code_arg(FunctionCallInfo fcinfo, int arg, const char *column, int maxlen)
{
	text	   *value;
	const char *why;

	if (PG_ARGISNULL(arg))
		missing_column(column, "Meter and Account codes are short identifiers such as api_requests.");
	value = PG_GETARG_TEXT_PP(arg);
	why = m3ter_check_code(VARDATA_ANY(value), VARSIZE_ANY_EXHDR(value), maxlen);
	if (why != NULL)
		bad_column(column, psprintf("\"%s\"", text_to_cstring(value)), why,
				   "Meter and Account codes are short identifiers such as api_requests.");
}

/* A timestamp column m3ter must be able to take */
static void
check_timestamp_arg(FunctionCallInfo fcinfo, int arg, const char *column)
{
	if (!PG_ARGISNULL(arg) && !m3ter_timestamp_in_range(PG_GETARG_TIMESTAMPTZ(arg)))
		bad_column(column, NULL, "It is outside the range m3ter takes.",
				   "m3ter takes timestamps from year 1 to year 9999.");
}

/*
 * m3ter.check_usage(uid, meter, account, ts, ets, measure, cost, income,
 *		who, "where", what, other, metadata) RETURNS boolean
 *
 * True, or an error that says what is wrong with the row.
 */
Datum
m3ter_check_usage(PG_FUNCTION_ARGS)
{
	int			k;

	if (PG_ARGISNULL(ARG_UID))
		missing_column("uid", "Leave uid out to have a UUID generated.");
	else
	{
		text	   *uid = PG_GETARG_TEXT_PP(ARG_UID);
		const char *why;

		if (VARSIZE_ANY_EXHDR(uid) == 0)
			bad_column("uid", NULL, "It must not be empty.", "Leave uid out to have a UUID generated.");
		why = m3ter_check_uid(VARDATA_ANY(uid), VARSIZE_ANY_EXHDR(uid));
		if (why != NULL)
			bad_column("uid", NULL, why, "A uid is a short unique string, such as a UUID; leave it out to have one generated.");
	}
	check_code_arg(fcinfo, ARG_METER, "meter", 80);
	check_code_arg(fcinfo, ARG_ACCOUNT, "account", 0);
	if (PG_ARGISNULL(ARG_TS))
		missing_column("ts", "Leave ts out for now(), or give the time the usage happened.");
	check_timestamp_arg(fcinfo, ARG_TS, "ts");
	check_timestamp_arg(fcinfo, ARG_ETS, "ets");

	for (k = 0; k < M3TER_NUM_MAPS; k++)
	{
		const char *why;
		const char *key;
		int			keylen;

		if (PG_ARGISNULL(ARG_FIRST_MAP + k))
			continue;
		why = m3ter_check_map(PG_GETARG_JSONB_P(ARG_FIRST_MAP + k), m3ter_map_kinds[k],
							  &key, &keylen);
		if (why != NULL)
			bad_column(m3ter_map_names[k],
					   keylen > 0 ? psprintf("key \"%.*s\"", keylen, key) : NULL,
					   why, map_hints[m3ter_map_kinds[k]]);
	}

	m3ter_wake_worker_at_commit();
	PG_RETURN_BOOL(true);
}
