/*-------------------------------------------------------------------------
 *
 * events.c
 *		What m3ter did after "accepted": read its ingest.validation.failure
 *		events and write them back to m3ter.outbox.
 *
 * m3ter answers {"result": "accepted"} before its enrichment stage, which
 * may still drop a measurement.  Each drop raises an event in the Events
 * API; the event points to a failed-ingest log (fetched through
 * getDownloadUrl, a presigned URL valid for 5 minutes) that holds the
 * error and the original measurement, so its uid.  A poll:
 *
 *	- reads the events from the stored position (m3ter.event_cursor),
 *	  then from the first page until a page holds nothing new (m3ter does
 *	  not say whether it lists oldest or newest first), at most MAX_PAGES
 *	  pages and MAX_EVENTS new events per poll, paced like every Config
 *	  API call;
 *	- skips an event already in m3ter.ingest_events (handled before);
 *	- marks the rows its log names 'rejected' with the failure type and
 *	  message; DuplicateUid (a re-send of a stored uid) is counted and
 *	  changes no row; CalculationError (ingested without the derived
 *	  field) changes no row either;
 *	- records every event it handled in m3ter.ingest_events, with
 *	  matched = false when it names no uid of this database.
 *
 * Invariants:
 *	- The position, the handled events and the row marks are written in
 *	  the caller's transaction: a crash at any point rolls all of them
 *	  back together, so an event is never lost and never handled twice.
 *	- Pollers exclude each other through the cursor row (FOR UPDATE SKIP
 *	  LOCKED): a second poller returns at once.
 *	- A transient failure (network, 429, 5xx, an expired download URL)
 *	  ends the poll before the event concerned; the next poll resumes there.
 *	  A download failure that may last (403, 404) does too, until the same
 *	  event has failed so on BLOCKED_POLLS polls in a row (counted in
 *	  m3ter.event_cursor); then the event is recorded unread with a note,
 *	  as one whose log is larger than the response cap is at once, and the
 *	  poll goes on past it: one unreadable log never holds up later events.
 *	- m3ter does not publish the JSON of an event's m3terEvent nor of the
 *	  log file: every assumption about them lives in the "assumed shapes"
 *	  section below, and is tolerant (any nesting, several member names).
 *	- Every text taken from an event or a log (messages, types, uids) is in
 *	  the database encoding: the page of events, an m3terEvent serialized
 *	  into a string and each value of a log are parsed through ground/json.c,
 *	  which converts m3ter's UTF-8 (escaping what the encoding cannot hold).
 *	- From the worker, the poll runs in a subtransaction (entry/periodic.c):
 *	  its failure is logged and rolled back without touching the drain of
 *	  the same pass.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "outbox/events.h"
#include "client/client.h"
#include "client/credentials.h"
#include "client/http.h"
#include "client/pacing.h"
#include "client/request.h"
#include "ground/json.h"
#include "ground/measurement.h"
#include "ground/settings.h"
#include "ground/spi_util.h"
#include "ground/standby.h"
#include "ground/version.h"

PG_FUNCTION_INFO_V1(m3ter_poll_events);

#define EVENT_NAME "ingest.validation.failure"
#define PAGE_SIZE 100
#define MAX_PAGES 20
#define MAX_EVENTS 200
/* polls in a row whose download of one event's log fails the same lasting way before it is recorded */
#define BLOCKED_POLLS 3


/* What one poll did */
typedef struct PollStats
{
	int64		events;			/* new events handled */
	int64		rejected;		/* rows marked rejected */
	int64		duplicates;		/* DuplicateUid for rows of this database */
	int64		unmatched;		/* events naming no uid of this database */
	int64		pages;			/* pages of events read */
	bool		busy;			/* another poll held the cursor */
	char	   *error;			/* why the poll stopped early, or NULL */
	/* the event whose log's download failed in a way that may last, from event_cursor */
	char	   *blocked_event;	/* its id, or NULL */
	int			blocked_polls;	/* polls in a row it failed so */
} PollStats;

/* One failure named by a log: a uid, its type and message */
typedef struct Failure
{
	char	   *uid;
	char	   *type;
	char	   *message;
} Failure;

/* ---- the assumed shapes (m3ter does not publish them) ---- */

static const char *const type_names[] = {"errorType", "errorCode", "failureType", "error_type", NULL};
/* the failure types m3ter documents: found as any member's value when no name above holds one */
static const char *const known_types[] = {"UndefinedMeter", "MissingField", "DuplicateField",
"InvalidAccountCode", "CalculationError", "DuplicateUid", NULL};
static const char *const message_names[] = {"errorMessage", "message", "error", "reason", NULL};
static const char *const file_names[] = {"getDownloadUrl", "downloadUrl", "file", "fileName",
"filePath", "path", "key", NULL};

/* A string member of obj (not nested) whose name is one of names, or NULL */
static const char *
member_string(const cJSON *obj, const char *const *names)
{
	int			i;

	if (!cJSON_IsObject(obj))
		return NULL;
	for (i = 0; names[i] != NULL; i++)
	{
		const cJSON *item = cJSON_GetObjectItem(obj, names[i]);

		if (cJSON_IsString(item) && item->valuestring[0] != '\0')
			return item->valuestring;
	}
	return NULL;
}

/* The first string member named one of names, searching depth-first */
static const char *
find_string(const cJSON *node, const char *const *names, int depth)
{
	const cJSON *child;
	const char *found = member_string(node, names);

	if (found != NULL || depth <= 0)
		return found;
	cJSON_ArrayForEach(child, node)
	{
		if (cJSON_IsObject(child) || cJSON_IsArray(child))
		{
			found = find_string(child, names, depth - 1);
			if (found != NULL)
				return found;
		}
	}
	return NULL;
}

/*
 * The documented failure type s names, written any way (DuplicateUid,
 * DUPLICATE_UID, duplicate-uid), or NULL
 */
static const char *
documented_type(const char *s)
{
	char		folded[64];
	int			n = 0;
	int			i;

	if (s == NULL)
		return NULL;
	for (; *s != '\0' && n < (int) sizeof(folded) - 1; s++)
		if (isalnum((unsigned char) *s))
			folded[n++] = pg_ascii_tolower((unsigned char) *s);
	folded[n] = '\0';
	for (i = 0; known_types[i] != NULL; i++)
		if (pg_strcasecmp(folded, known_types[i]) == 0)
			return known_types[i];
	return NULL;
}

/*
 * A documented failure type held as a string member of obj or of the
 * objects under it (depth levels; arrays are not entered, so one failure
 * of a list does not lend its type to another), or NULL
 */
static const char *
known_type_value(const cJSON *obj, int depth)
{
	const cJSON *child;

	if (!cJSON_IsObject(obj) || depth <= 0)
		return NULL;
	cJSON_ArrayForEach(child, obj)
	{
		if (cJSON_IsString(child) && documented_type(child->valuestring) != NULL)
			return documented_type(child->valuestring);
	}
	cJSON_ArrayForEach(child, obj)
	{
		const char *found = known_type_value(child, depth - 1);

		if (found != NULL)
			return found;
	}
	return NULL;
}

/*
 * The failure type an object states: a documented type named by a member
 * named for it, or held by any member nearby; else what a member named for
 * it holds (not a documented type: no row is changed for it); else NULL
 */
static const char *
stated_type(const cJSON *obj, int depth)
{
	const char *named = member_string(obj, type_names);
	const char *t = documented_type(named);

	if (t == NULL)
		t = known_type_value(obj, depth);
	return t != NULL ? t : named;
}

/* Decode %XX and '+' in a query parameter value */
static char *
url_decode(const char *s, int len)
{
	char	   *out = palloc(len + 1);
	int			i;
	int			j = 0;

	for (i = 0; i < len; i++)
	{
		if (s[i] == '%' && i + 2 < len && isxdigit((unsigned char) s[i + 1]) &&
			isxdigit((unsigned char) s[i + 2]))
		{
			char		hex[3] = {s[i + 1], s[i + 2], '\0'};

			out[j++] = (char) strtol(hex, NULL, 16);
			i += 2;
		}
		else
			out[j++] = s[i] == '+' ? ' ' : s[i];
	}
	out[j] = '\0';
	return out;
}

/*
 * The log file an event points to: the file parameter when the member
 * holds a getDownloadUrl path or URL, else the member as it is.
 */
static char *
event_file(const cJSON *m3ter_event)
{
	const char *value = find_string(m3ter_event, file_names, 4);
	const char *param;
	int			len;

	if (value == NULL)
		return NULL;
	param = strstr(value, "file=");
	if (param == NULL)
		return pstrdup(value);
	param += 5;
	len = strcspn(param, "&#");
	return url_decode(param, len);
}

/* Collect the uids under node with the nearest error type and message */
static void
collect_failures(const cJSON *node, const char *type, const char *message,
				 List **failures, int depth)
{
	const cJSON *child;
	const cJSON *uid;

	if (depth <= 0)
		return;
	if (cJSON_IsObject(node))
	{
		const char *t = stated_type(node, 2);
		const char *msg = member_string(node, message_names);

		/* the nearest wins, but a documented type is not overridden by another name */
		if (t != NULL && (documented_type(t) != NULL || documented_type(type) == NULL))
			type = t;
		if (msg != NULL)
			message = msg;
		uid = cJSON_GetObjectItem(node, "uid");
		if (cJSON_IsString(uid) && uid->valuestring[0] != '\0')
		{
			Failure    *f = palloc(sizeof(Failure));

			f->uid = pstrdup(uid->valuestring);
			f->type = type ? pstrdup(type) : NULL;
			f->message = message ? pstrdup(message) : NULL;
			*failures = lappend(*failures, f);
			return;
		}
	}
	cJSON_ArrayForEach(child, node)
	{
		if (cJSON_IsObject(child) || cJSON_IsArray(child))
			collect_failures(child, type, message, failures, depth - 1);
	}
}

/* collect_failures() of one value of a log, which is freed whatever happens */
static List *
value_failures(cJSON *root, const char *type, const char *message, List *failures)
{
	PG_TRY();
	{
		collect_failures(root, type, message, &failures, 8);
	}
	PG_CATCH();
	{
		cJSON_Delete(root);
		PG_RE_THROW();
	}
	PG_END_TRY();
	cJSON_Delete(root);
	return failures;
}

/*
 * The failures of a log file (m3ter's UTF-8): one JSON document, or JSON
 * lines; their uids, types and messages in the database encoding
 */
static List *
log_failures(const char *body, const char *type, const char *message)
{
	List	   *failures = NIL;

	body = m3ter_without_nul_escapes(body);
	/* JSON values one after another (one, or a line each, or run together); a line not JSON is skipped */
	while (*(body += strspn(body, " \t\r\n")) != '\0')
	{
		const char *end = NULL;
		cJSON	   *root = m3ter_parse_utf8(body, &end);

		if (root == NULL)
		{
			body += strcspn(body, "\n");
			continue;
		}
		failures = value_failures(root, type, message, failures);
		body = end;
	}
	return failures;
}

/* ---- writing events back ---- */

/* Run a statement with text arguments (NULL for SQL NULL) */
static void
run_sql(const char *sql, int nargs, const char *const *args, int expect)
{
	Oid			types[6];
	Datum		values[6];
	char		nulls[6];
	int			i;
	int			rc;

	Assert(nargs <= 6);
	for (i = 0; i < nargs; i++)
	{
		types[i] = TEXTOID;
		values[i] = args[i] ? CStringGetTextDatum(args[i]) : (Datum) 0;
		nulls[i] = args[i] ? ' ' : 'n';
	}
	rc = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);
	if (rc != expect)
		elog(ERROR, "m3ter event query failed: %s", SPI_result_code_string(rc));
}

/* The first column of the first row of the last query, as int64 */
static int64
first_int(void)
{
	bool		isnull;
	Datum		v;

	if (SPI_processed < 1)
		return 0;
	v = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? 0 : DatumGetInt64(v);
}

/*
 * Mark the row of one failure; adds to the stats; returns whether the uid is
 * ours.  *untyped is set when it is ours but neither the event nor the log
 * names a documented failure type: the row is left as it is then (were it
 * a DuplicateUid, the original stands and is billed; a user who inserted a
 * "rejected" row again would bill it twice).
 */
static bool
apply_failure(const Failure *f, const char *type, const char *message, PollStats *stats,
			  bool *untyped)
{
	const char *t = documented_type(f->type) ? documented_type(f->type) : documented_type(type);
	const char *msg = f->message ? f->message : message;
	const char *args[3] = {f->uid, t, msg};

	if (t == NULL)
	{
		run_sql("SELECT count(*) FROM m3ter.outbox WHERE uid = $1", 1, args, SPI_OK_SELECT);
		if (first_int() == 0)
			return false;
		*untyped = true;
		return true;
	}
	if (strcmp(t, "DuplicateUid") == 0)
	{
		/* a re-send: m3ter kept the original; the row stays as it is */
		run_sql("SELECT count(*) FROM m3ter.outbox WHERE uid = $1", 1, args, SPI_OK_SELECT);
		if (first_int() == 0)
			return false;
		run_sql("SELECT count(*) FROM m3ter.outbox WHERE uid = $1 AND status = 'accepted'",
				1, args, SPI_OK_SELECT);
		stats->duplicates += first_int();
		return true;
	}
	if (strcmp(t, "CalculationError") == 0)
	{
		/* ingested without the derived field: not a rejection */
		run_sql("SELECT count(*) FROM m3ter.outbox WHERE uid = $1", 1, args, SPI_OK_SELECT);
		return first_int() > 0;
	}
	run_sql("WITH r AS (UPDATE m3ter.outbox SET status = 'rejected', rejected_at = now(), "
			"rejection_type = $2, next_attempt_at = LEAST(next_attempt_at, created_at), "
			"error = coalesce($3, 'm3ter dropped the measurement after accepting it') "
			"WHERE uid = $1 AND status IN ('accepted', 'pending') RETURNING 1) "
			"SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM m3ter.outbox WHERE uid = $1)",
			3, args, SPI_OK_SELECT);
	stats->rejected += first_int();
	{
		bool		isnull;
		Datum		v = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);

		return !isnull && DatumGetInt64(v) > 0;
	}
}

/* Record a handled event in m3ter.ingest_events */
static void
record_event(const char *id, const cJSON *event, const char *type, const char *message,
			 const char *file, List *failures, bool matched, const char *note,
			 int64 rejected, int64 duplicates)
{
	Oid			types[11] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTARRAYOID,
	BOOLOID, TEXTOID, TEXTOID, INT4OID, INT4OID};
	Datum		values[11];
	char		nulls[11];
	const cJSON *time = cJSON_GetObjectItem(event, "eventTime");
	char	   *json = cJSON_PrintUnformatted(event);
	Datum	   *uids = palloc(Max(list_length(failures), 1) * sizeof(Datum));
	ListCell   *lc;
	int			n = 0;
	int			i;
	const char *texts[5] = {id,
		(cJSON_IsString(time) && m3ter_valid_iso8601(time->valuestring)) ? time->valuestring : NULL,
	type, message, file};

	for (i = 0; i < 5; i++)
	{
		values[i] = texts[i] ? CStringGetTextDatum(texts[i]) : (Datum) 0;
		nulls[i] = texts[i] ? ' ' : 'n';
	}
	foreach(lc, failures)
		uids[n++] = CStringGetTextDatum(((Failure *) lfirst(lc))->uid);
	values[5] = PointerGetDatum(construct_array(uids, n, TEXTOID, -1, false, TYPALIGN_INT));
	nulls[5] = ' ';
	values[6] = BoolGetDatum(matched);
	nulls[6] = ' ';
	values[7] = note ? CStringGetTextDatum(note) : (Datum) 0;
	nulls[7] = note ? ' ' : 'n';
	values[8] = CStringGetTextDatum(json);
	nulls[8] = ' ';
	values[9] = Int32GetDatum((int32) rejected);
	nulls[9] = ' ';
	values[10] = Int32GetDatum((int32) duplicates);
	nulls[10] = ' ';
	cJSON_free(json);

	if (SPI_execute_with_args("INSERT INTO m3ter.ingest_events (event_id, event_time, error_type, message, "
							  "file, uids, matched, note, event, rejected, duplicates) "
							  "VALUES ($1, $2::timestamptz, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11)",
							  11, types, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "m3ter ingest event insert failed");
}

/*
 * A download of an event's log failed in a way that may last (getDownloadUrl
 * answering 404, the presigned URL 403 or 404): a 403 also comes from a URL
 * that expired on the way, and m3ter may not have written the log yet.  The
 * poll ends before the event, as for a transient failure, until the same
 * event has failed so on BLOCKED_POLLS polls in a row (the URL is asked for
 * afresh at each poll); then returns the note the event is recorded with.
 */
static char *
lasting_failure(const char *event_id, const char *what, PollStats *stats)
{
	if (stats->blocked_event != NULL && strcmp(stats->blocked_event, event_id) == 0)
		stats->blocked_polls++;
	else
	{
		stats->blocked_event = pstrdup(event_id);
		stats->blocked_polls = 1;
	}
	if (stats->blocked_polls >= BLOCKED_POLLS)
		return stats->blocked_polls > 1 ?
			psprintf("%s on %d polls in a row", what, stats->blocked_polls) : pstrdup(what);
	stats->error = psprintf("%s (poll %d of %d for event %s before it is recorded unread)", what,
							stats->blocked_polls, BLOCKED_POLLS, event_id);
	return NULL;
}

/*
 * A poll's error for a call of what that failed: named for the token
 * endpoint when no token was had, not for the Events API (palloc'd)
 */
static char *
call_error(const M3terCallResult *res, const char *what)
{
	return psprintf("%s: %s (HTTP %ld)", res->token_failed ? "asking for a bearer token" : what,
					res->message ? res->message : "failed", res->status);
}

/*
 * Fetch the log file of an event: getDownloadUrl on the Config API, then a
 * plain GET of the presigned URL with no Authorization header.  Returns
 * the body; NULL with *transient set to retry later, or NULL with *note
 * set when the log cannot be had at all (a log larger than the response
 * cap, a URL that cannot be used, or a failure that lasted: see
 * lasting_failure()).
 */
static char *
fetch_log(const char *event_id, const char *file, int max_retries, bool *transient, char **note,
		  PollStats *stats)
{
	M3terCallResult res;
	M3terHttpResponse resp;
	const char *url;
	cJSON	   *answer;

	*transient = false;
	if (strncmp(file, "http://", 7) == 0 || strncmp(file, "https://", 8) == 0)
		url = file;				/* the event carried the URL itself */
	else
	{
		m3ter_call(M3TER_CONFIG_API, "GET",
				   m3ter_org_path(psprintf("/measurements/failedIngest/getDownloadUrl?file=%s",
										   m3ter_url_encode(file))),
				   NULL, 0, max_retries, &res);
		if (res.outcome != M3TER_OK)
		{
			if (res.outcome == M3TER_REJECTED)
			{
				*note = psprintf("getDownloadUrl answered HTTP %ld: %s", res.status,
								 res.message ? res.message : "");
				return NULL;
			}
			if (res.outcome == M3TER_UNEXPECTED && res.status >= 400 && res.status < 500)
			{
				/* 404, 410: no such file, or not yet */
				*note = lasting_failure(event_id,
										psprintf("getDownloadUrl answered HTTP %ld: %s", res.status,
												 res.message ? res.message : ""),
										stats);
				*transient = (*note == NULL);
				return NULL;
			}
			/* unreachable, busy, or refused for the token or the configuration: every event alike */
			*transient = true;
			stats->error = call_error(&res, "getDownloadUrl");
			return NULL;
		}
		answer = cJSON_Parse(res.body);
		url = answer ? find_string(answer, (const char *const[]) {"url", "downloadUrl", NULL}, 2) : NULL;
		if (url == NULL)
		{
			*note = pstrdup("getDownloadUrl answered without a url");
			if (answer)
				cJSON_Delete(answer);
			return NULL;
		}
		url = pstrdup(url);
		cJSON_Delete(answer);
	}

	/* a presigned URL carries its own signature: no Authorization header */
	m3ter_http_exchange("GET", url, NULL, NULL, 0, 0, &resp);
	if (resp.status >= 200 && resp.status < 300)
		return resp.body;
	if (resp.too_large || resp.bad_url)
	{
		/* it will not be smaller, nor the URL usable, at the next poll */
		*note = psprintf("the failed-ingest download could not be read: %s",
						 resp.too_large ? resp.transport_error : "its URL cannot be used");
		return NULL;
	}
	if (resp.status == 0 || resp.status == 408 || resp.status == 429 || resp.status >= 500)
	{
		/* unreachable or busy: next poll */
		*transient = true;
		stats->error = psprintf("failed-ingest download: %s",
								resp.status == 0 ? resp.transport_error :
								psprintf("HTTP %ld", resp.status));
		return NULL;
	}
	*note = lasting_failure(event_id, psprintf("the failed-ingest download answered HTTP %ld", resp.status),
							stats);
	*transient = (*note == NULL);
	return NULL;
}

/*
 * Handle one event.  Returns 1 when it was new and is now handled, 0 when
 * it was handled before (or cannot be), -1 to stop the poll before it.
 */
static int
handle_event(const cJSON *event, int max_retries, PollStats *stats)
{
	const cJSON *id = cJSON_GetObjectItem(event, "id");
	const cJSON *name = cJSON_GetObjectItem(event, "eventName");
	const cJSON *body = cJSON_GetObjectItem(event, "m3terEvent");
	cJSON	   *parsed = NULL;
	const char *args[1];
	const char *type;
	const char *message;
	char	   *file;
	char	   *note = NULL;
	List	   *failures = NIL;
	ListCell   *lc;
	bool		matched = false;
	bool		untyped = false;
	int64		rejected_before = stats->rejected;
	int64		duplicates_before = stats->duplicates;

	if (!cJSON_IsString(id) || id->valuestring[0] == '\0')
		return 0;				/* nothing to remember it by */
	if (cJSON_IsString(name) && strcmp(name->valuestring, EVENT_NAME) != 0)
		return 0;
	args[0] = id->valuestring;
	run_sql("SELECT count(*) FROM m3ter.ingest_events WHERE event_id = $1", 1, args, SPI_OK_SELECT);
	if (first_int() > 0)
		return 0;				/* handled before */

	if (cJSON_IsString(body))
	{
		/* an object serialized into a string (converted with the page: its escapes were not) */
		parsed = m3ter_parse_embedded(body->valuestring, "an m3ter event");
		body = parsed;
	}
	if (body == NULL)
		body = event;
	type = find_string(body, type_names, 4);
	if (documented_type(type) != NULL)
		type = documented_type(type);
	else if (known_type_value(body, 4) != NULL)
		type = known_type_value(body, 4);
	message = find_string(body, message_names, 4);
	file = event_file(body);
	if (file != NULL)
	{
		bool		transient;
		char	   *log = fetch_log(id->valuestring, file, max_retries, &transient, &note, stats);

		if (transient)
		{
			if (parsed)
				cJSON_Delete(parsed);
			return -1;
		}
		if (log != NULL)
		{
			failures = log_failures(log, type, message);
			if (failures == NIL)
				note = pstrdup("the failed-ingest log names no uid");
		}
	}
	else
	{
		/* no log file: perhaps the event names the uids itself */
		collect_failures(body, type, message, &failures, 8);
		if (failures == NIL)
			note = pstrdup("the event names no failed-ingest log file");
	}

	foreach(lc, failures)
	{
		if (apply_failure((Failure *) lfirst(lc), type, message, stats, &untyped))
			matched = true;
	}
	if (untyped)
	{
		/* kept for the operator: whether those rows were billed is not known */
		matched = false;
		note = pstrdup("neither the event nor its failed-ingest log names a failure type m3ter documents; "
					   "the rows it names were left as they are");
	}
	if (type == NULL && failures != NIL)
		type = ((Failure *) linitial(failures))->type;
	if (!matched)
		stats->unmatched++;
	record_event(id->valuestring, event, type, message, file, failures, matched, note,
				 stats->rejected - rejected_before, stats->duplicates - duplicates_before);
	stats->events++;
	if (stats->blocked_event != NULL && strcmp(stats->blocked_event, id->valuestring) == 0)
	{
		/* handled at last, or recorded unread */
		stats->blocked_event = NULL;
		stats->blocked_polls = 0;
	}
	if (parsed)
		cJSON_Delete(parsed);
	return 1;
}

/* Save the polling position, what the poll did and the event whose log keeps failing */
static void
save_cursor(const char *token, PollStats *stats)
{
	Oid			types[5] = {TEXTOID, INT8OID, TEXTOID, TEXTOID, INT4OID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};

	values[0] = token ? CStringGetTextDatum(token) : (Datum) 0;
	nulls[0] = token ? ' ' : 'n';
	values[1] = Int64GetDatum(stats->events);
	values[2] = stats->error ? CStringGetTextDatum(stats->error) : (Datum) 0;
	nulls[2] = stats->error ? ' ' : 'n';
	values[3] = stats->blocked_event ? CStringGetTextDatum(stats->blocked_event) : (Datum) 0;
	nulls[3] = stats->blocked_event ? ' ' : 'n';
	values[4] = Int32GetDatum(stats->blocked_event ? stats->blocked_polls : 0);
	if (SPI_execute_with_args("UPDATE m3ter.event_cursor SET next_token = $1, polled_at = now(), "
							  "events_handled = events_handled + $2, last_error = $3, "
							  "last_error_at = CASE WHEN $3 IS NULL THEN last_error_at ELSE now() END, "
							  "blocked_event = $4, blocked_polls = $5",
							  5, types, values, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "m3ter event cursor update failed");
}

/*
 * Read pages of events from token on and handle the new ones.  Forward
 * (head = false): follow nextToken to the end; *resume becomes the token of
 * the last page that held events.  Head (head = true): from the first page,
 * stop at the first page with nothing new.  Returns false when the poll
 * must stop (budget spent, or a transient failure).
 */
static bool
read_pages(char *token, bool head, int max_retries, PollStats *stats, char **resume)
{
	bool		restarted = false;

	while (stats->pages < MAX_PAGES && stats->events < MAX_EVENTS)
	{
		M3terCallResult res;
		cJSON	   *page;
		cJSON	   *data;
		cJSON	   *next;
		cJSON	   *event;
		char	   *path = psprintf("/events?eventName=%s&pageSize=%d%s%s", EVENT_NAME, PAGE_SIZE,
									token ? "&nextToken=" : "",
									token ? m3ter_url_encode(token) : "");
		int			fresh = 0;

		m3ter_call(M3TER_CONFIG_API, "GET", m3ter_org_path(path), NULL, 0, max_retries, &res);
		if (res.outcome == M3TER_REJECTED && token != NULL && !head && !restarted)
		{
			/* the stored position is no longer valid: start over (handled events are skipped) */
			token = NULL;
			*resume = NULL;
			restarted = true;
			continue;
		}
		if (res.outcome != M3TER_OK)
		{
			if (stats->pages == 0 && max_retries > 0)
				m3ter_raise_call_error(&res, "listing m3ter events");
			stats->error = call_error(&res, "listing events");
			return false;
		}
		stats->pages++;
		page = m3ter_parse_answer(res.body, "listing m3ter events");
		data = cJSON_GetObjectItemCaseSensitive(page, "data");
		cJSON_ArrayForEach(event, data)
		{
			int			handled = stats->events < MAX_EVENTS ?
				handle_event(event, max_retries, stats) : -1;

			if (handled < 0)
			{
				/* (data is part of page: read before the page is freed) */
				if (!head && cJSON_GetArraySize(data) > 0)
					*resume = token;
				cJSON_Delete(page);
				return false;
			}
			fresh += handled;
		}
		if (!head && cJSON_GetArraySize(data) > 0)
			*resume = token;
		next = cJSON_GetObjectItemCaseSensitive(page, "nextToken");
		if ((head && fresh == 0) || !cJSON_IsString(next) || next->valuestring[0] == '\0')
		{
			cJSON_Delete(page);
			return true;
		}
		token = pstrdup(next->valuestring);
		cJSON_Delete(page);
	}
	return false;
}

/*
 * One poll (SPI connected, in the caller's transaction).  m3ter does not
 * say in which order it lists events: the poll reads forward from the
 * stored position (oldest first), then from the first page until a page
 * holds nothing new (newest first).  Either way each new event is read.
 */
static void
poll_events(int max_retries, PollStats *stats)
{
	char	   *stored;
	char	   *resume;
	char	   *polls;

	/* the worker polls only then; a call from SQL is refused with the hint, as others are */
	m3ter_require_installed_version();
	(void) m3ter_require_org_id();
	m3ter_require_credentials();

	if (SPI_execute("SELECT next_token, blocked_event, blocked_polls FROM m3ter.event_cursor "
					"FOR UPDATE SKIP LOCKED", false, 1) != SPI_OK_SELECT)
		elog(ERROR, "m3ter event cursor query failed");
	if (SPI_processed != 1)
	{
		stats->busy = true;
		return;
	}
	stored = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	resume = stored;
	polls = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
	stats->blocked_event = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	stats->blocked_polls = polls ? atoi(polls) : 0;

	if (read_pages(stored, false, max_retries, stats, &resume) && stored != NULL)
		(void) read_pages(NULL, true, max_retries, stats, &resume);
	save_cursor(resume, stats);
}

/* A poll from the worker: a failure part-way is logged, what was read stays */
void
m3ter_events_poll_logged(void)
{
	PollStats	stats;

	memset(&stats, 0, sizeof(stats));
	poll_events(0, &stats);
	if (stats.error != NULL)
		ereport(LOG, (errmsg("m3ter event poll stopped early: %s", stats.error)));
}

/* m3ter_poll_events() RETURNS jsonb */
Datum
m3ter_poll_events(PG_FUNCTION_ARGS)
{
	PollStats	stats;
	StringInfoData out;
	MemoryContext caller = CurrentMemoryContext;

	m3ter_require_primary("m3ter_poll_events()");
	memset(&stats, 0, sizeof(stats));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	poll_events(m3ter_max_retries, &stats);

	MemoryContextSwitchTo(caller);
	initStringInfo(&out);
	appendStringInfo(&out,
					 "{\"events\":" INT64_FORMAT ",\"rejected\":" INT64_FORMAT
					 ",\"duplicates\":" INT64_FORMAT ",\"unmatched\":" INT64_FORMAT
					 ",\"pages\":" INT64_FORMAT ",\"busy\":%s,\"error\":",
					 stats.events, stats.rejected, stats.duplicates, stats.unmatched,
					 stats.pages, stats.busy ? "true" : "false");
	if (stats.error)
		escape_json(&out, stats.error);
	else
		appendStringInfoString(&out, "null");
	appendStringInfoChar(&out, '}');
	SPI_finish();
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(out.data)));
}
