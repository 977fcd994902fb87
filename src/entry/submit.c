/*-------------------------------------------------------------------------
 *
 * submit.c
 *		m3ter_submit(measurements jsonb): synchronous Ingest API calls.
 *
 * Every measurement is checked before anything is sent, so bad input
 * never leaves half a submission at m3ter.  Measurements without a uid
 * get a fresh one, returned to the caller.  They then go through the
 * sender (sender.c), the same path as the outbox: requests as full as the
 * limits allow, several in flight, paced with the whole cluster.  A
 * transient fault is retried up to m3ter.max_retries times with growing
 * delays, a 413 splits the request in halves, anything else raises.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "client/request.h"
#include "client/sender.h"
#include "ground/errors.h"
#include "ground/measurement.h"
#include "ground/settings.h"
#include "ground/uid.h"
#include "ground/version.h"

PG_FUNCTION_INFO_V1(m3ter_submit);

typedef struct SubmitState
{
	M3terGroup	group;			/* written measurements */
	int			accepted;
	int			requests;
} SubmitState;

/* Raise a validation error for measurement index i */
static void
bad_measurement(int i, const char *field, const char *reason)
{
	ereport(ERROR,
			(errcode(reason == m3ter_not_utf8 ? ERRCODE_CHARACTER_NOT_IN_REPERTOIRE : ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid \"%s\" in the measurement at index %d", field, i),
			 errdetail("%s", reason),
			 errhint("A measurement needs \"meter\", \"account\" and \"ts\" (ISO 8601 with a time zone); "
					 "measure, cost and income map names to numbers; who, where, what, other and metadata map names to strings.")));
}

/*
 * Record that measurement i has uid, refusing a uid an earlier measurement
 * of the call has: m3ter stores a uid once
 */
static void
note_uid(HTAB *uids, const char *uid, int i)
{
	bool		found;
	char	   *entry = hash_search(uids, uid, HASH_ENTER, &found);
	int		   *index = (int *) (entry + M3TER_UID_MAX_BYTES + 1);

	if (found)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid \"uid\" in the measurement at index %d", i),
				 errdetail("The measurement at index %d has the same uid: m3ter stores a uid once, so one of them would not count.",
						   *index),
				 errhint("Give each measurement its own uid, or leave uid out to have one generated.")));
	*index = i;
}

/*
 * An ISO 8601 date-time (checked) as the outbox sends one: UTC, with
 * milliseconds (2022-08-24T14:15:22.123Z), whatever offset or precision it
 * was written with
 */
static const char *
utc_milliseconds(const char *iso)
{
	TimestampTz ts = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in, CStringGetDatum(iso),
															 ObjectIdGetDatum(InvalidOid),
															 Int32GetDatum(-1)));
	char	   *buf = palloc(M3TER_TIMESTAMP_LEN);

	m3ter_format_timestamp(ts, buf, M3TER_TIMESTAMP_LEN);
	return buf;
}

/* A string field's text, or a validation error */
static const char *
string_field(int i, const char *field, JsonbValue *v)
{
	if (v->type != jbvString)
		bad_measurement(i, field, "It must be a JSON string.");
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/* Check one measurement object and describe it in *m */
static void
read_measurement(int i, JsonbValue *obj, M3terMeasurement *m)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *key = NULL;
	const char *bad_key;
	int			bad_keylen;
	const char *why;

	memset(m, 0, sizeof(*m));
	if (obj->type != jbvBinary || !JsonContainerIsObject(obj->val.binary.data))
		bad_measurement(i, "measurement", "Each measurement must be a JSON object.");

	it = JsonbIteratorInit(obj->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		int			k;

		if (tok == WJB_KEY)
		{
			key = pnstrdup(v.val.string.val, v.val.string.len);
			continue;
		}
		if (tok != WJB_VALUE)
			continue;

		if (strcmp(key, "uid") == 0)
		{
			m->uid = string_field(i, key, &v);
			if (m->uid[0] == '\0')
				bad_measurement(i, key, "It must not be empty; leave it out to have one generated.");
			if ((why = m3ter_check_uid(m->uid, strlen(m->uid))) != NULL)
				bad_measurement(i, key, why);
		}
		else if (strcmp(key, "meter") == 0 || strcmp(key, "account") == 0)
		{
			const char *code = string_field(i, key, &v);

			if ((why = m3ter_check_code(code, strlen(code), key[0] == 'm' ? 80 : 0)) != NULL)
				bad_measurement(i, key, why);
			if (key[0] == 'm')
				m->meter = code;
			else
				m->account = code;
		}
		else if (strcmp(key, "ts") == 0 || strcmp(key, "ets") == 0)
		{
			const char *ts = string_field(i, key, &v);

			if (!m3ter_valid_iso8601(ts))
				bad_measurement(i, key,
								psprintf("\"%s\" is not an ISO 8601 date-time with a time zone, such as 2022-08-24T14:15:22Z.", ts));
			ts = utc_milliseconds(ts);
			if (key[0] == 't')
				m->ts = ts;
			else
				m->ets = ts;
		}
		else
		{
			for (k = 0; k < M3TER_NUM_MAPS; k++)
				if (strcmp(key, m3ter_map_names[k]) == 0)
					break;
			if (k == M3TER_NUM_MAPS)
				bad_measurement(i, key, "m3ter measurements have no such field.");
			if (v.type == jbvNull)
				continue;
			if (v.type != jbvBinary)
				bad_measurement(i, key, "It must be a JSON object.");
			m->maps[k] = JsonbValueToJsonb(&v);
			if ((why = m3ter_check_map(m->maps[k], m3ter_map_kinds[k], &bad_key, &bad_keylen)) != NULL)
				bad_measurement(i, bad_keylen > 0 ? psprintf("%s.%.*s", key, bad_keylen, bad_key) : key, why);
		}
	}

	if (m->meter == NULL)
		bad_measurement(i, "meter", "It is required: the code of the Meter.");
	if (m->account == NULL)
		bad_measurement(i, "account", "It is required: the code of the Account.");
	if (m->ts == NULL)
		bad_measurement(i, "ts", "It is required: when the usage happened.");
	if (m->uid == NULL)
		m->uid = m3ter_new_uid();
}

/* Error context: how much of this call m3ter had already accepted */
static void
submit_error_context(void *arg)
{
	SubmitState *st = (SubmitState *) arg;

	if (st->accepted > 0)
		errcontext("m3ter had accepted %d of the %d measurements of this call before the failure; "
				   "sending them again with the same uids is safe (give each measurement its own "
				   "\"uid\" to be able to: generated ones are not kept)",
				   st->accepted, st->group.n);
}

/* What to do with one answered request; raises when the call fails */
static void
answered(SubmitState *st, M3terSender *s, M3terSend *send)
{
	M3terCallResult *r = &send->result;

	if (!send->untried)
		st->requests += r->requests;
	switch (r->outcome)
	{
		case M3TER_OK:
			st->accepted += send->end - send->start;
			m3ter_sender_finish(s, send);
			return;
		case M3TER_TOO_LARGE:
			if (send->end - send->start > 1)
			{
				m3ter_sender_split(s, send);
				return;
			}
			break;
		case M3TER_TRANSIENT:
			/* untried: handed back by a stop (the token endpoint gave up) */
			if (!send->untried && send->tries < m3ter_max_retries && !m3ter_waits_too_long(r, send->tries))
			{
				m3ter_sender_requeue(s, send, m3ter_backoff_ms(send->tries, r->retry_after_ms));
				return;
			}
			break;
		default:
			break;
	}
	/* an untried send keeps the stop's count: the token fetch's retries */
	if (!send->untried)
		r->retries = send->tries;
	m3ter_raise_call_error(r, "submitting measurements to m3ter");
}

/* Send every measurement of the call, several requests in flight at once */
static void
send_all(SubmitState *st)
{
	M3terSender s;

	m3ter_sender_init(&s, m3ter_max_in_flight);
	s.max_token_failures = m3ter_max_retries;	/* a call gives up, as others do */
	s.gives_up_when_throttled = true;
	PG_TRY();
	{
		m3ter_sender_queue(&s, &st->group, 0, st->group.n);
		while (m3ter_sender_busy(&s) > 0 || m3ter_sender_has_done(&s))
		{
			M3terSend  *send;

			m3ter_sender_pump(&s, 100);
			while ((send = m3ter_sender_next_done(&s)) != NULL)
				answered(st, &s, send);
			CHECK_FOR_INTERRUPTS();
		}
		st->requests += s.token_requests;
	}
	PG_CATCH();
	{
		m3ter_sender_abort(&s);
		m3ter_sender_free(&s);
		PG_RE_THROW();
	}
	PG_END_TRY();
	m3ter_sender_free(&s);
}

/*
 * m3ter_submit(measurements jsonb) RETURNS jsonb
 *
 * Returns {"result":"accepted","measurements":N,"requests":R,"uids":[...]}.
 */
Datum
m3ter_submit(PG_FUNCTION_ARGS)
{
	Jsonb	   *input = PG_GETARG_JSONB_P(0);
	SubmitState st;
	ErrorContextCallback errctx;
	JsonbValue	v;
	JsonbIterator *it;
	JsonbIteratorToken tok;
	StringInfoData buf;
	StringInfoData out;
	HTAB	   *uids;
	HASHCTL		ctl;

	m3ter_require_installed_version();
	/* the uids given so far and where: m3ter stores a uid once, so a call repeating one is refused */
	ctl.keysize = M3TER_UID_MAX_BYTES + 1;
	ctl.entrysize = ctl.keysize + sizeof(int);
	ctl.hcxt = CurrentMemoryContext;
	uids = hash_create("m3ter_submit uids", 64, &ctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	memset(&st, 0, sizeof(st));
	m3ter_group_init(&st.group, CurrentMemoryContext, 16);
	initStringInfo(&buf);
	initStringInfo(&out);
	appendStringInfoString(&out, "[");

	/* check and write every measurement before sending any */
	if (JB_ROOT_IS_SCALAR(input))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("m3ter_submit takes a measurement object or an array of them"),
				 errdetail("The argument is a JSON scalar.")));
	it = JsonbIteratorInit(&input->root);
	tok = JsonbIteratorNext(&it, &v, true);
	if (tok == WJB_BEGIN_OBJECT)
	{
		v.type = jbvBinary;
		v.val.binary.data = &input->root;
		v.val.binary.len = VARSIZE(input) - VARHDRSZ;
		it = NULL;
	}
	for (;;)
	{
		M3terMeasurement m;

		if (it != NULL)
		{
			tok = JsonbIteratorNext(&it, &v, true);
			if (tok != WJB_ELEM)
				break;
		}
		read_measurement(st.group.n, &v, &m);
		note_uid(uids, m.uid, st.group.n);
		resetStringInfo(&buf);
		m3ter_append_measurement(&buf, &m);
		if (M3TER_PAYLOAD_OVERHEAD + buf.len >= M3TER_MAX_PAYLOAD_BYTES)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("the measurement at index %d is too large for m3ter", st.group.n),
					 errdetail("Written as JSON it takes %d bytes; a request must stay under %d bytes.",
							   buf.len, M3TER_MAX_PAYLOAD_BYTES),
					 errhint("Move large values out of metadata.")));
		m3ter_group_add(&st.group, buf.data, buf.len);
		if (st.group.n > 1)
			appendStringInfoChar(&out, ',');
		escape_json(&out, m.uid);
		if (it == NULL)
			break;
	}
	appendStringInfoString(&out, "]");
	if (st.group.n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("m3ter_submit needs at least one measurement"),
				 errdetail("The array is empty.")));

	/* send them in requests as full as the limits allow */
	errctx.callback = submit_error_context;
	errctx.arg = &st;
	errctx.previous = error_context_stack;
	error_context_stack = &errctx;
	send_all(&st);
	error_context_stack = errctx.previous;

	resetStringInfo(&buf);
	appendStringInfo(&buf,
					 "{\"result\":\"accepted\",\"measurements\":%d,\"requests\":%d,\"uids\":%s}",
					 st.accepted, st.requests, out.data);
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}
