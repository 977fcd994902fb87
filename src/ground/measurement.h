/*-------------------------------------------------------------------------
 *
 * measurement.h
 *		Measurement validation and compact JSON (measurement.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_GROUND_MEASUREMENT_H
#define M3TER_GROUND_MEASUREMENT_H

#include "datatype/timestamp.h"
#include "lib/stringinfo.h"
#include "utils/jsonb.h"

typedef enum M3terMapKind
{
	M3TER_NUMERIC_MAP,
	M3TER_STRING_MAP
} M3terMapKind;

/* The map fields of a measurement, in the order they are written */
#define M3TER_NUM_MAPS 8
extern const char *const m3ter_map_names[M3TER_NUM_MAPS];
extern const M3terMapKind m3ter_map_kinds[M3TER_NUM_MAPS];

typedef struct M3terMeasurement
{
	const char *uid;
	const char *meter;
	const char *account;
	const char *ts;				/* ISO 8601 text */
	const char *ets;			/* ISO 8601 text or NULL */
	Jsonb	   *maps[M3TER_NUM_MAPS];	/* NULL when absent */
} M3terMeasurement;

/* The reason the checks below give for text that is not UTF-8 in a SQL_ASCII database */
extern const char m3ter_not_utf8[];
extern const char *m3ter_check_code(const char *s, int len, int maxlen);
/* The longest uid, in bytes */
#define M3TER_UID_MAX_BYTES 512
extern const char *m3ter_check_uid(const char *s, int len);
extern const char *m3ter_check_map(Jsonb *map, M3terMapKind kind,
								   const char **key, int *keylen);
extern bool m3ter_valid_iso8601(const char *s);
extern bool m3ter_timestamp_in_range(TimestampTz ts);
/* room for m3ter_format_timestamp(): 2022-08-24T14:15:22.123Z and a NUL */
#define M3TER_TIMESTAMP_LEN 40
extern void m3ter_format_timestamp(TimestampTz ts, char *buf, size_t buflen);
extern void m3ter_append_measurement(StringInfo buf, const M3terMeasurement *m);
/* The fields of a measurement as an outbox row holds them: uid, meter, account, ts, ets, the maps */
#define M3TER_NUM_FIELDS (5 + M3TER_NUM_MAPS)
extern void m3ter_measurement_from_datums(M3terMeasurement *m, const Datum *values, const bool *nulls,
										  char *ts, char *ets);

#endif							/* M3TER_GROUND_MEASUREMENT_H */
