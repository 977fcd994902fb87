/*-------------------------------------------------------------------------
 *
 * uid.c
 *		The default uid of an outbox row: a time-ordered UUID (version 7).
 *
 * A random uid (gen_random_uuid()) lands each new entry of the unique
 * index on uid on a random leaf page: every INSERT reads and dirties a page
 * of its own, and after each checkpoint writes it whole to the WAL.  A
 * version 7 UUID starts with the time in milliseconds, so new entries go to
 * the right edge of the index, as the primary key's do, while the 74 bits
 * after the time keep it as unguessable and collision-free as m3ter needs
 * (RFC 9562, section 5.7).  The 12 bits after the milliseconds carry the
 * fraction of the millisecond (RFC 9562, section 6.2, method 3), so a
 * session's uids also sort in the order they were made.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "ground/uid.h"
#include "ground/compat.h"

PG_FUNCTION_INFO_V1(m3ter_new_uid_sql);

#define UID_TEXT_LEN 36

/* A version 7 UUID in its usual form, 8-4-4-4-12 lower-case hex digits */
static void
write_uid(char *out)
{
	static const char hex[] = "0123456789abcdef";
	uint8		bytes[16];
	TimestampTz now = GetCurrentTimestamp();	/* microseconds since 2000 */
	int64		unix_us = now + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY;
	uint64		unix_ms = (uint64) (unix_us / 1000);
	uint32		fraction = (uint32) ((unix_us % 1000) * 4096 / 1000);	/* 12 bits */
	int			i;

	if (!pg_strong_random(bytes + 6, sizeof(bytes) - 6))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random values for a uid")));

	/* 48 bits of Unix time in milliseconds, big-endian */
	for (i = 0; i < 6; i++)
		bytes[i] = (uint8) (unix_ms >> (8 * (5 - i)));
	/* version 7 and the millisecond's fraction, then the variant (10) */
	bytes[6] = (uint8) (0x70 | (fraction >> 8));
	bytes[7] = (uint8) (fraction & 0xFF);
	bytes[8] = (uint8) (0x80 | (bytes[8] & 0x3F));

	for (i = 0; i < 16; i++)
	{
		if (i == 4 || i == 6 || i == 8 || i == 10)
			*out++ = '-';
		*out++ = hex[bytes[i] >> 4];
		*out++ = hex[bytes[i] & 0x0F];
	}
}

/* A new uid, palloc'd and NUL-terminated: for measurements given none */
char *
m3ter_new_uid(void)
{
	char	   *uid = palloc(UID_TEXT_LEN + 1);

	write_uid(uid);
	uid[UID_TEXT_LEN] = '\0';
	return uid;
}

/* m3ter.new_uid() returns text: the default of m3ter.outbox.uid */
Datum
m3ter_new_uid_sql(PG_FUNCTION_ARGS)
{
	text	   *result = (text *) palloc(VARHDRSZ + UID_TEXT_LEN);

	SET_VARSIZE(result, VARHDRSZ + UID_TEXT_LEN);
	write_uid(VARDATA(result));
	PG_RETURN_TEXT_P(result);
}
