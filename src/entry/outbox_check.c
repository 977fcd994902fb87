/*-------------------------------------------------------------------------
 *
 * outbox_check.c
 *		The CHECK constraint of m3ter.outbox: one C call per row.
 *
 * m3ter.check_outbox_row(outbox) refuses a bad row at INSERT (and UPDATE)
 * with an error that names the field, using the same rules as
 * m3ter_submit() (measurement.c), and checks the status and attempts the
 * extension writes.  It takes the whole row: PostgreSQL reads a CHECK's
 * expression back from its stored text at every statement, and one
 * whole-row argument costs a fraction of thirteen columns and three
 * constraints (most of what an INSERT cost over a plain table).  It
 * allocates nothing per row unless it raises.  m3ter.check_usage(), the
 * CHECK of 1.2, stays for a server that runs this library before ALTER
 * EXTENSION m3ter UPDATE.
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

#include "access/detoast.h"
#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/typcache.h"

#include "ground/errors.h"
#include "ground/measurement.h"
#include "outbox/slots.h"

PG_FUNCTION_INFO_V1(m3ter_check_usage);
PG_FUNCTION_INFO_V1(m3ter_check_outbox_row);

/* Positions of the usage fields (the arguments of m3ter.check_usage()) */
#define ARG_UID			0
#define ARG_METER		1
#define ARG_ACCOUNT		2
#define ARG_TS			3
#define ARG_ETS			4
#define ARG_FIRST_MAP	5
#define NUM_FIELDS		M3TER_NUM_FIELDS

/* The usage fields of a row, in the order above */
typedef struct UsageFields
{
	Datum		values[NUM_FIELDS];
	bool		nulls[NUM_FIELDS];
} UsageFields;

/* The outbox's columns before the maps (the maps are m3ter_map_names), and all their types */
static const char *const field_columns[ARG_FIRST_MAP] = {"uid", "meter", "account", "ts", "ets"};
static const Oid field_types[NUM_FIELDS] = {
	TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
	JSONBOID, JSONBOID, JSONBOID, JSONBOID, JSONBOID, JSONBOID, JSONBOID, JSONBOID
};

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
check_code_field(const UsageFields *f, int arg, const char *column, int maxlen)
{
	text	   *value;
	const char *why;

	if (f->nulls[arg])
		missing_column(column, "Meter and Account codes are short identifiers such as api_requests.");
	value = DatumGetTextPP(f->values[arg]);
	why = m3ter_check_code(VARDATA_ANY(value), VARSIZE_ANY_EXHDR(value), maxlen);
	if (why != NULL)
		bad_column(column, psprintf("\"%s\"", text_to_cstring(value)), why,
				   "Meter and Account codes are short identifiers such as api_requests.");
}

/* A timestamp column m3ter must be able to take */
static void
check_timestamp_field(const UsageFields *f, int arg, const char *column)
{
	if (!f->nulls[arg] && !m3ter_timestamp_in_range(DatumGetTimestampTz(f->values[arg])))
		bad_column(column, NULL, "It is outside the range m3ter takes.",
				   "m3ter takes timestamps from year 1 to year 9999.");
}

/* Raise the error for the first usage field m3ter cannot take */
static void
check_usage_fields(const UsageFields *f)
{
	int			k;

	if (f->nulls[ARG_UID])
		missing_column("uid", "Leave uid out to have a UUID generated.");
	else
	{
		text	   *uid = DatumGetTextPP(f->values[ARG_UID]);
		const char *why;

		if (VARSIZE_ANY_EXHDR(uid) == 0)
			bad_column("uid", NULL, "It must not be empty.", "Leave uid out to have a UUID generated.");
		why = m3ter_check_uid(VARDATA_ANY(uid), VARSIZE_ANY_EXHDR(uid));
		if (why != NULL)
			bad_column("uid", NULL, why, "A uid is a short unique string, such as a UUID; leave it out to have one generated.");
	}
	check_code_field(f, ARG_METER, "meter", 80);
	check_code_field(f, ARG_ACCOUNT, "account", 0);
	if (f->nulls[ARG_TS])
		missing_column("ts", "Leave ts out for now(), or give the time the usage happened.");
	check_timestamp_field(f, ARG_TS, "ts");
	check_timestamp_field(f, ARG_ETS, "ets");

	for (k = 0; k < M3TER_NUM_MAPS; k++)
	{
		const char *why;
		const char *key;
		int			keylen;

		if (f->nulls[ARG_FIRST_MAP + k])
			continue;
		why = m3ter_check_map(DatumGetJsonbP(f->values[ARG_FIRST_MAP + k]), m3ter_map_kinds[k],
							  &key, &keylen);
		if (why != NULL)
			bad_column(m3ter_map_names[k],
					   keylen > 0 ? psprintf("key \"%.*s\"", keylen, key) : NULL,
					   why, map_hints[m3ter_map_kinds[k]]);
	}
}

/*
 * A row that no request could carry: refused here as m3ter_submit() refuses
 * it (54000), not left for the worker to mark failed.  Its JSON is written
 * only for a row of SIZE_CHECK_FROM bytes or more: escapes and the
 * conversion to UTF-8 make the JSON larger than the row, up to six times a
 * string's bytes, so a smaller row fits unless its numbers carry thousands
 * of decimal places (then the worker marks it failed, with the sizes).
 */
#define SIZE_CHECK_FROM (M3TER_MAX_PAYLOAD_BYTES / 8)

static void
check_fits_request(const UsageFields *f)
{
	Size		raw = 0;
	M3terMeasurement m;
	char		ts[M3TER_TIMESTAMP_LEN];
	char		ets[M3TER_TIMESTAMP_LEN];
	StringInfoData buf;
	int			i;

	/* (the size as written: a value from another table may come compressed or toasted) */
	for (i = 0; i < NUM_FIELDS; i++)
		if (!f->nulls[i] && field_types[i] != TIMESTAMPTZOID)
			raw += toast_raw_datum_size(f->values[i]);
	if (raw < SIZE_CHECK_FROM)
		return;
	m3ter_measurement_from_datums(&m, f->values, f->nulls, ts, ets);
	initStringInfo(&buf);
	m3ter_append_measurement(&buf, &m);
	if (M3TER_PAYLOAD_OVERHEAD + buf.len >= M3TER_MAX_PAYLOAD_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("outbox row \"%s\" is too large for m3ter", m.uid),
				 errdetail("A request with it alone would take %d bytes (%d of them the measurement as JSON); m3ter takes requests under %d bytes.",
						   M3TER_PAYLOAD_OVERHEAD + buf.len, buf.len, M3TER_MAX_PAYLOAD_BYTES),
				 errhint("Move large values out of metadata.")));
	pfree(buf.data);
}

/*
 * m3ter.check_usage(uid, meter, account, ts, ets, measure, cost, income,
 *		who, "where", what, other, metadata) RETURNS boolean
 *
 * The CHECK of 1.2: true, or an error that says what is wrong with the row.
 */
Datum
m3ter_check_usage(PG_FUNCTION_ARGS)
{
	UsageFields f;
	int			i;

	for (i = 0; i < NUM_FIELDS; i++)
	{
		f.nulls[i] = PG_ARGISNULL(i);
		f.values[i] = f.nulls[i] ? (Datum) 0 : PG_GETARG_DATUM(i);
	}
	check_usage_fields(&f);
	m3ter_wake_worker_at_commit();
	PG_RETURN_BOOL(true);
}

/* Where the outbox's columns are in its row type, kept for the statement */
typedef struct RowLayout
{
	Oid			typid;
	int32		typmod;
	TupleDesc	desc;			/* a copy, in the function's context */
	int			field_attno[NUM_FIELDS];	/* 0-based; -1: no such column */
	int			status_attno;
	int			attempts_attno;
	int			error_attno;
	Datum	   *values;			/* room to deform a row */
	bool	   *nulls;
} RowLayout;

/*
 * The column of the row type called name, 0-based, or -1 when there is none;
 * one of another type (the table altered by hand) is refused: its value
 * cannot be read as the check reads it
 */
static int
column_index(TupleDesc desc, const char *name, Oid type)
{
	int			i;

	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || strcmp(NameStr(att->attname), name) != 0)
			continue;
		if (att->atttypid != type)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("column \"%s\" of m3ter.outbox is of type %s, not %s", name,
							format_type_be(att->atttypid), format_type_be(type)),
					 errdetail("The outbox's CHECK reads the column as m3ter's extension script created it."),
					 errhint("Give the column back its type, or reinstall the extension.")));
		return i;
	}
	return -1;
}

/* The layout of the row type typid, looked up once per statement */
static RowLayout *
row_layout(FunctionCallInfo fcinfo, Oid typid, int32 typmod)
{
	RowLayout  *layout = fcinfo->flinfo->fn_extra;
	TupleDesc	desc;
	MemoryContext old;
	int			i;

	if (layout != NULL && layout->typid == typid && layout->typmod == typmod)
		return layout;
	desc = lookup_rowtype_tupdesc(typid, typmod);
	layout = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(RowLayout));
	layout->typid = typid;
	layout->typmod = typmod;
	old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);
	layout->desc = CreateTupleDescCopy(desc);
	MemoryContextSwitchTo(old);
	for (i = 0; i < NUM_FIELDS; i++)
		layout->field_attno[i] = column_index(desc, i < ARG_FIRST_MAP ? field_columns[i] :
											  m3ter_map_names[i - ARG_FIRST_MAP], field_types[i]);
	layout->status_attno = column_index(desc, "status", TEXTOID);
	layout->attempts_attno = column_index(desc, "attempts", INT4OID);
	layout->error_attno = column_index(desc, "error", TEXTOID);
	layout->values = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, desc->natts * sizeof(Datum));
	layout->nulls = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, desc->natts * sizeof(bool));
	ReleaseTupleDesc(desc);
	fcinfo->flinfo->fn_extra = layout;
	return layout;
}

/* Is the text value one of the statuses a row may have? */
static bool
known_status(text *value)
{
	static const char *const statuses[] = {"pending", "accepted", "failed", "rejected"};
	int			len = VARSIZE_ANY_EXHDR(value);
	int			i;

	for (i = 0; i < lengthof(statuses); i++)
		if (len == (int) strlen(statuses[i]) && memcmp(VARDATA_ANY(value), statuses[i], len) == 0)
			return true;
	return false;
}

/* The status and attempts the extension writes */
static void
check_state(const RowLayout *layout)
{
	int			s = layout->status_attno;
	int			a = layout->attempts_attno;

	if (s >= 0 && !layout->nulls[s] && !known_status(DatumGetTextPP(layout->values[s])))
		ereport(ERROR,
				(errcode(ERRCODE_CHECK_VIOLATION),
				 errmsg("invalid status for m3ter.outbox: \"%.64s\"", TextDatumGetCString(layout->values[s])),
				 errdetail("A row's status is pending, accepted, failed or rejected."),
				 errhint("Set status to 'pending' to send a row again, or call m3ter_retry_failed().")));
	if (a >= 0 && !layout->nulls[a] && DatumGetInt32(layout->values[a]) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_CHECK_VIOLATION),
				 errmsg("invalid attempts for m3ter.outbox: %d", DatumGetInt32(layout->values[a])),
				 errdetail("attempts counts the sends of a row: it is never negative.")));
}

/*
 * Is the row as an application writes it: pending, never tried, no error?
 * Only such a row is sized (check_fits_request): the extension's own writes
 * of outcomes and holds to a row it took must not start refusing it.
 */
static bool
as_inserted(const RowLayout *layout)
{
	int			s = layout->status_attno;
	int			a = layout->attempts_attno;
	int			e = layout->error_attno;
	text	   *status;

	if (s < 0 || a < 0 || e < 0 || layout->nulls[s] || layout->nulls[a])
		return false;
	status = DatumGetTextPP(layout->values[s]);
	return VARSIZE_ANY_EXHDR(status) == 7 && memcmp(VARDATA_ANY(status), "pending", 7) == 0 &&
		DatumGetInt32(layout->values[a]) == 0 && layout->nulls[e];
}

/*
 * m3ter.check_outbox_row(m3ter.outbox) RETURNS boolean
 *
 * The CHECK of m3ter.outbox: true, or an error that says what is wrong.
 */
Datum
m3ter_check_outbox_row(PG_FUNCTION_ARGS)
{
	HeapTupleHeader row;
	RowLayout  *layout;
	HeapTupleData tuple;
	UsageFields f;
	int			i;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();		/* no row: nothing to say (a CHECK never passes one) */
	row = PG_GETARG_HEAPTUPLEHEADER(0);
	layout = row_layout(fcinfo, HeapTupleHeaderGetTypeId(row), HeapTupleHeaderGetTypMod(row));

	tuple.t_len = HeapTupleHeaderGetDatumLength(row);
	ItemPointerSetInvalid(&tuple.t_self);
	tuple.t_tableOid = InvalidOid;
	tuple.t_data = row;
	heap_deform_tuple(&tuple, layout->desc, layout->values, layout->nulls);

	for (i = 0; i < NUM_FIELDS; i++)
	{
		int			attno = layout->field_attno[i];

		f.nulls[i] = attno < 0 || layout->nulls[attno];
		f.values[i] = f.nulls[i] ? (Datum) 0 : layout->values[attno];
	}
	check_usage_fields(&f);
	check_state(layout);
	/*
	 * (not while an update of the extension proves the CHECK on rows
	 * stored before it: the worker marks such a row failed, with the sizes,
	 * as it did)
	 */
	if (as_inserted(layout) && !creating_extension)
		check_fits_request(&f);
	m3ter_wake_worker_at_commit();
	PG_RETURN_BOOL(true);
}
