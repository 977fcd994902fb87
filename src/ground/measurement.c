/*-------------------------------------------------------------------------
 *
 * measurement.c
 *		Measurement rules, compact JSON output and request packing.
 *
 * One code path serves m3ter_submit() and the outbox: both describe a
 * measurement as an M3terMeasurement and write it with
 * m3ter_append_measurement() (the sender packs them into requests).  The
 * rules checked here are the ones the Ingest API documents:
 *	- meter and account are codes: not empty, no non-printable or
 *	  whitespace characters other than space, no leading or trailing
 *	  whitespace (a Meter code is at most 80 characters);
 *	- measure, cost, income map strings to numbers; who, where, what,
 *	  other, metadata map strings to strings;
 *	- ts and ets are ISO 8601 date-times with a time zone.
 * A request holds 1 to 1000 measurements and is under 512,000 bytes.
 *
 * Text is checked and written in any database encoding: codes are decoded
 * to Unicode to apply the character rules, and the JSON written is UTF-8
 * (converted from the database encoding).  A SQL_ASCII database declares no
 * encoding; its text is taken to be UTF-8, and codes, map keys and map
 * values that are not are refused when the row is written.  Should such
 * bytes still reach the writer (a uid, say), they go out as U+FFFD.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/string.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"

#include "ground/measurement.h"

const char *const m3ter_map_names[M3TER_NUM_MAPS] = {
	"measure", "cost", "income", "who", "where", "what", "other", "metadata"
};

const M3terMapKind m3ter_map_kinds[M3TER_NUM_MAPS] = {
	M3TER_NUMERIC_MAP, M3TER_NUMERIC_MAP, M3TER_NUMERIC_MAP,
	M3TER_STRING_MAP, M3TER_STRING_MAP, M3TER_STRING_MAP,
	M3TER_STRING_MAP, M3TER_STRING_MAP
};

/* Why text of a SQL_ASCII database is refused (callers tell it by its address: 22021) */
const char m3ter_not_utf8[] = "It must be UTF-8 text: this database's encoding is SQL_ASCII, and m3ter reads UTF-8.";

/* Unicode code points that count as whitespace or are not printable */
static bool
is_forbidden_codepoint(pg_wchar c)
{
	if (c < 0x20 || c == 0x7f || (c >= 0x80 && c < 0xa0))
		return true;
	switch (c)
	{
		case 0xa0:
		case 0x1680:
		case 0x2028:
		case 0x2029:
		case 0x202f:
		case 0x205f:
		case 0x3000:
		case 0xfeff:
			return true;
	}
	return (c >= 0x2000 && c <= 0x200b);
}

/*
 * Check a code (Meter or Account code, field code) of len bytes.  Returns
 * NULL when it is good, else a sentence that says what is wrong.  maxlen
 * counts characters; 0 means no limit.
 */
const char *
m3ter_check_code(const char *s, int len, int maxlen)
{
	int			nchars = 0;
	const char *p;
	const char *end;
	int			enc = GetDatabaseEncoding();
	bool		ascii = true;
	int			i;

	if (len == 0)
		return "It must not be empty.";
	if (s[0] == ' ' || s[len - 1] == ' ')
		return "It must not start or end with whitespace.";
	for (i = 0; i < len && ascii; i++)
		ascii = !IS_HIGHBIT_SET(s[i]);
	if (!ascii && enc != PG_UTF8)
	{
		/* decode as UTF-8: converted, or as it is in SQL_ASCII */
		if (enc == PG_SQL_ASCII)
		{
			if (!pg_verify_mbstr(PG_UTF8, s, len, true))
				return m3ter_not_utf8;
		}
		else
		{
			s = pg_server_to_any(s, len, PG_UTF8);
			len = strlen(s);
		}
	}
	p = s;
	end = s + len;
	while (p < end)
	{
		unsigned char b = (unsigned char) *p;
		pg_wchar	c;

		if (b < 0x80)
		{
			c = b;
			p++;
		}
		else
		{
			c = utf8_to_unicode((const unsigned char *) p);
			p += pg_utf_mblen((const unsigned char *) p);
		}
		if (is_forbidden_codepoint(c))
			return "It must not contain non-printable or whitespace characters other than space.";
		nchars++;
	}
	if (maxlen > 0 && nchars > maxlen)
		return psprintf("It must be at most %d characters long.", maxlen);
	return NULL;
}

/* In a SQL_ASCII database, is the text s (len bytes) UTF-8? */
static bool
sql_ascii_text_ok(const char *s, int len)
{
	int			i;

	for (i = 0; i < len; i++)
		if (IS_HIGHBIT_SET(s[i]))
			return pg_verify_mbstr(PG_UTF8, s, len, true);
	return true;
}

/*
 * Check a uid of len bytes (not empty: callers say so with their own hint).
 * It is kept in the outbox's unique index, whose entries have a size limit,
 * and must reach m3ter as the same string (UTF-8: in a SQL_ASCII database
 * two different invalid byte strings would both arrive as U+FFFD).
 */
const char *
m3ter_check_uid(const char *s, int len)
{
	if (len > M3TER_UID_MAX_BYTES)
		return psprintf("It takes %d bytes; a uid may take at most %d.", len, M3TER_UID_MAX_BYTES);
	if (GetDatabaseEncoding() == PG_SQL_ASCII && !sql_ascii_text_ok(s, len))
		return m3ter_not_utf8;
	return NULL;
}

/* Does a numeric fit in a double, as m3ter reads numbers? */
static bool
numeric_fits_double(Numeric n)
{
	static Numeric max_double = NULL;
	static Numeric min_double = NULL;

	if (max_double == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		max_double = DatumGetNumeric(DirectFunctionCall3(numeric_in,
														 CStringGetDatum("1.7976931348623157e308"),
														 ObjectIdGetDatum(InvalidOid),
														 Int32GetDatum(-1)));
		min_double = DatumGetNumeric(DirectFunctionCall3(numeric_in,
														 CStringGetDatum("-1.7976931348623157e308"),
														 ObjectIdGetDatum(InvalidOid),
														 Int32GetDatum(-1)));
		MemoryContextSwitchTo(old);
	}
	return DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(n),
											 NumericGetDatum(max_double))) <= 0 &&
		DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(n),
										  NumericGetDatum(min_double))) >= 0;
}

/*
 * Check a map field.  Returns NULL when good, else a sentence; *key and
 * *keylen then point at the offending key inside map (keylen 0 when the
 * fault is not about one key).
 *
 * This runs for every outbox row written, so it reads the object's
 * entries in place (keys first, then values, as jsonb stores an object)
 * instead of iterating, and allocates nothing.
 */
const char *
m3ter_check_map(Jsonb *map, M3terMapKind kind, const char **key, int *keylen)
{
	JsonbContainer *jc = &map->root;
	int			count;
	char	   *base;
	int			i;
	bool		sql_ascii = GetDatabaseEncoding() == PG_SQL_ASCII;

	*key = NULL;
	*keylen = 0;
	if (!JsonContainerIsObject(jc))
		return "It must be a JSON object.";

	count = JsonContainerSize(jc);
	base = (char *) &jc->children[count * 2];
	for (i = 0; i < count; i++)
	{
		JEntry		value = jc->children[i + count];

		*key = base + getJsonbOffset(jc, i);
		*keylen = getJsonbLength(jc, i);
		if (*keylen == 0)
			return "Its keys must not be empty.";
		if (sql_ascii && !sql_ascii_text_ok(*key, *keylen))
			return m3ter_not_utf8;
		if (kind == M3TER_NUMERIC_MAP)
		{
			if (!JBE_ISNUMERIC(value))
				return "Its values must be numbers.";
			if (!numeric_fits_double((Numeric) (base + INTALIGN(getJsonbOffset(jc, i + count)))))
				return "Its values must fit in a double precision number.";
		}
		else if (!JBE_ISSTRING(value))
			return "Its values must be strings.";
		else if (sql_ascii &&
				 !sql_ascii_text_ok(base + getJsonbOffset(jc, i + count),
									getJsonbLength(jc, i + count)))
			return m3ter_not_utf8;
	}
	*key = NULL;
	*keylen = 0;
	return NULL;
}

/* Two digits at s, or -1 */
static int
two_digits(const char *s)
{
	if (s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9')
		return -1;
	return (s[0] - '0') * 10 + (s[1] - '0');
}

/*
 * Is s an ISO 8601 date-time with a zone, as m3ter takes it:
 * YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM|+HHMM|-HHMM)
 */
bool
m3ter_valid_iso8601(const char *s)
{
	int			year,
				month,
				day,
				hour,
				minute,
				second;
	const char *p;

	if (strlen(s) < 20)
		return false;
	year = two_digits(s) * 100 + two_digits(s + 2);
	month = two_digits(s + 5);
	day = two_digits(s + 8);
	hour = two_digits(s + 11);
	minute = two_digits(s + 14);
	second = two_digits(s + 17);
	if (two_digits(s) < 0 || two_digits(s + 2) < 0 || year < 1 ||
		s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') ||
		s[13] != ':' || s[16] != ':' ||
		month < 1 || month > 12 || day < 1 ||
		day > day_tab[isleap(year)][month - 1] ||
		hour < 0 || hour > 23 || minute < 0 || minute > 59 ||
		second < 0 || second > 60)
		return false;
	p = s + 19;
	if (*p == '.')
	{
		p++;
		if (*p < '0' || *p > '9')
			return false;
		while (*p >= '0' && *p <= '9')
			p++;
	}
	if ((*p == 'Z' || *p == 'z') && p[1] == '\0')
		return true;
	if (*p != '+' && *p != '-')
		return false;
	p++;
	if (two_digits(p) < 0 || two_digits(p) > 23)
		return false;
	p += 2;
	if (*p == ':')
		p++;
	return two_digits(p) >= 0 && two_digits(p) <= 59 && p[2] == '\0';
}

/* Split ts into UTC fields; false when m3ter cannot take it (not years 1-9999) */
static bool
utc_fields(TimestampTz ts, struct pg_tm *tm, fsec_t *fsec)
{
	return !TIMESTAMP_NOT_FINITE(ts) &&
		timestamp2tm(ts, NULL, tm, fsec, NULL, NULL) == 0 &&
		tm->tm_year >= 1 && tm->tm_year <= 9999;
}

/* Can m3ter take this timestamp? */
bool
m3ter_timestamp_in_range(TimestampTz ts)
{
	struct pg_tm tm;
	fsec_t		fsec;

	return utc_fields(ts, &tm, &fsec);
}

/* Format a timestamptz as 2022-08-24T14:15:22.123Z (UTC, milliseconds) */
void
m3ter_format_timestamp(TimestampTz ts, char *buf, size_t buflen)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (!utc_fields(ts, &tm, &fsec))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range for m3ter"),
				 errdetail("m3ter takes timestamps from year 1 to year 9999.")));
	snprintf(buf, buflen, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
			 tm.tm_year, tm.tm_mon, tm.tm_mday,
			 tm.tm_hour, tm.tm_min, tm.tm_sec, (int) (fsec / 1000));
}

/*
 * Append s (len bytes of database text) as a JSON string literal in UTF-8.
 * In a UTF8 database, and for ASCII text, the bytes are copied with the
 * JSON escapes: this runs for every string of every measurement sent.
 */
static void
append_json_string(StringInfo buf, const char *s, int len)
{
	const char *end;
	const char *run;
	bool		check_utf8 = false;
	int			enc = GetDatabaseEncoding();

	if (enc != PG_UTF8)
	{
		const char *p;

		for (p = s; p < s + len; p++)
			if (IS_HIGHBIT_SET(*p))
				break;
		if (p < s + len)
		{
			if (enc == PG_SQL_ASCII)
				check_utf8 = true;
			else
			{
				s = pg_server_to_any(s, len, PG_UTF8);
				len = strlen(s);
			}
		}
	}
	end = s + len;
	run = s;

	appendStringInfoCharMacro(buf, '"');
	for (; s < end; s++)
	{
		unsigned char c = (unsigned char) *s;

		if (c >= 0x20 && c != '"' && c != '\\')
		{
			if (check_utf8 && c >= 0x80)
			{
				int			l = pg_utf_mblen((const unsigned char *) s);

				if (l <= end - s && pg_utf8_islegal((const unsigned char *) s, l))
					s += l - 1;
				else
				{
					appendBinaryStringInfo(buf, run, s - run);
					run = s + 1;
					appendStringInfoString(buf, "\\ufffd");
				}
			}
			continue;
		}
		appendBinaryStringInfo(buf, run, s - run);
		run = s + 1;
		switch (c)
		{
			case '"':
				appendStringInfoString(buf, "\\\"");
				break;
			case '\\':
				appendStringInfoString(buf, "\\\\");
				break;
			case '\n':
				appendStringInfoString(buf, "\\n");
				break;
			case '\r':
				appendStringInfoString(buf, "\\r");
				break;
			case '\t':
				appendStringInfoString(buf, "\\t");
				break;
			default:
				appendStringInfo(buf, "\\u%04x", c);
				break;
		}
	}
	appendBinaryStringInfo(buf, run, end - run);
	appendStringInfoCharMacro(buf, '"');
}

/* Append ,"name":"value" (or without the comma for the first field) */
static void
append_string_field(StringInfo buf, const char *name, const char *value, bool first)
{
	if (!first)
		appendStringInfoCharMacro(buf, ',');
	append_json_string(buf, name, strlen(name));
	appendStringInfoCharMacro(buf, ':');
	append_json_string(buf, value, strlen(value));
}

/* Append a flat map (already checked) as compact JSON */
static void
append_map(StringInfo buf, Jsonb *map)
{
	JsonbIterator *it = JsonbIteratorInit(&map->root);
	JsonbValue	v;
	JsonbIteratorToken tok;
	bool		first = true;

	appendStringInfoCharMacro(buf, '{');
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			if (!first)
				appendStringInfoCharMacro(buf, ',');
			first = false;
			append_json_string(buf, v.val.string.val, v.val.string.len);
			appendStringInfoCharMacro(buf, ':');
		}
		else if (tok == WJB_VALUE)
		{
			if (v.type == jbvString)
				append_json_string(buf, v.val.string.val, v.val.string.len);
			else if (v.type == jbvNumeric)
			{
				char	   *text = DatumGetCString(DirectFunctionCall1(numeric_out,
																	   NumericGetDatum(v.val.numeric)));

				appendStringInfoString(buf, text);
				pfree(text);
			}
			else
				elog(ERROR, "unexpected value in a checked m3ter map");
		}
	}
	appendStringInfoCharMacro(buf, '}');
}

/*
 * A measurement from the M3TER_NUM_FIELDS fields of an outbox row (the
 * required ones not NULL); the strings are palloc'd, the times written into
 * ts and ets (M3TER_TIMESTAMP_LEN bytes each).
 */
void
m3ter_measurement_from_datums(M3terMeasurement *m, const Datum *values, const bool *nulls, char *ts, char *ets)
{
	int			k;

	m->uid = TextDatumGetCString(values[0]);
	m->meter = TextDatumGetCString(values[1]);
	m->account = TextDatumGetCString(values[2]);
	m3ter_format_timestamp(DatumGetTimestampTz(values[3]), ts, M3TER_TIMESTAMP_LEN);
	m->ts = ts;
	m->ets = NULL;
	if (!nulls[4])
	{
		m3ter_format_timestamp(DatumGetTimestampTz(values[4]), ets, M3TER_TIMESTAMP_LEN);
		m->ets = ets;
	}
	for (k = 0; k < M3TER_NUM_MAPS; k++)
		m->maps[k] = nulls[5 + k] ? NULL : DatumGetJsonbP(values[5 + k]);
}

/* Write one measurement as compact JSON; empty maps are left out */
void
m3ter_append_measurement(StringInfo buf, const M3terMeasurement *m)
{
	int			i;

	appendStringInfoCharMacro(buf, '{');
	append_string_field(buf, "uid", m->uid, true);
	append_string_field(buf, "meter", m->meter, false);
	append_string_field(buf, "account", m->account, false);
	append_string_field(buf, "ts", m->ts, false);
	if (m->ets != NULL)
		append_string_field(buf, "ets", m->ets, false);
	for (i = 0; i < M3TER_NUM_MAPS; i++)
	{
		if (m->maps[i] == NULL || JB_ROOT_COUNT(m->maps[i]) == 0)
			continue;
		appendStringInfoCharMacro(buf, ',');
		append_json_string(buf, m3ter_map_names[i], strlen(m3ter_map_names[i]));
		appendStringInfoCharMacro(buf, ':');
		append_map(buf, m->maps[i]);
	}
	appendStringInfoCharMacro(buf, '}');
}
