/*-------------------------------------------------------------------------
 *
 * sender.c
 *		The one way measurements reach m3ter: requests packed as full as
 *		the limits allow, several in flight at once, paced, authorized.
 *
 * An owner (m3ter_submit, or the outbox delivery) hands the sender a
 * group: measurements already written as JSON, in one buffer.  The
 * sender packs the group into requests (at most 1000 measurements, under
 * 512,000 bytes each), starts them when the cluster's pacing gives a slot
 * and fewer than max_in_flight are running, and hands every finished
 * request back with its classified answer (client.c).  What to do with
 * an answer is the owner's choice, with the sender's help:
 *
 *	- m3ter_sender_split() halves a request m3ter rejected or found too
 *	  large; a request of n measurements split down to single ones costs
 *	  at most 2n - 1 requests;
 *	- m3ter_sender_requeue() sends it again after a delay (transient
 *	  faults).
 *
 * The sender itself handles authorization: it takes the cluster's token
 * (token.c) before starting requests; a 401 or 403 gets one fresh token
 * and one more try; when the token endpoint is down it waits with growing
 * delays, sending nothing and spending no attempt.  A configuration fault
 * (credentials refused, a 401/403 with a fresh token, an unexpected
 * answer) stops it: requests not yet started come back to the owner with
 * that answer, untried, and nothing more is started.
 *
 * Memory: a send lives in its group's memory context; the HTTP layer
 * keeps its own malloc'd copy of the body while the request runs.  On an
 * error the owner calls m3ter_sender_abort(), which abandons every
 * request.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "client/sender.h"
#include "client/http.h"
#include "client/pacing.h"
#include "client/request.h"
#include "client/token.h"
#include "ground/errors.h"

/* Prepare a sender for the Ingest API */
void
m3ter_sender_init(M3terSender *s, int max_in_flight)
{
	memset(s, 0, sizeof(*s));
	dlist_init(&s->queued);
	dlist_init(&s->done);
	s->max_in_flight = Max(max_in_flight, 1);
	s->max_token_failures = -1;
	s->url = MemoryContextStrdup(TopMemoryContext,
								 psprintf("%s%s", m3ter_api_base(M3TER_INGEST_API),
										  m3ter_org_path("/measurements")));
}

/* Release what m3ter_sender_init() allocated */
void
m3ter_sender_free(M3terSender *s)
{
	if (s->url != NULL)
		pfree(s->url);
	s->url = NULL;
}

/* Prepare an empty group in its own memory context, a child of parent */
void
m3ter_group_init(M3terGroup *g, MemoryContext parent, int capacity)
{
	MemoryContext old;

	g->cxt = AllocSetContextCreate(parent, "m3ter send group", ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(g->cxt);
	initStringInfo(&g->json);
	MemoryContextSwitchTo(old);
	g->offsets = MemoryContextAlloc(g->cxt, (capacity + 1) * sizeof(int));
	g->capacity = capacity;
	g->n = 0;
	g->offsets[0] = 0;
	g->outstanding = 0;
}

/* Add one measurement (written by m3ter_append_measurement into buf) to a group */
void
m3ter_group_add(M3terGroup *g, const char *item, int len)
{
	MemoryContext old = MemoryContextSwitchTo(g->cxt);

	if (g->n == g->capacity)
	{
		g->capacity *= 2;
		g->offsets = repalloc(g->offsets, (g->capacity + 1) * sizeof(int));
	}
	appendBinaryStringInfo(&g->json, item, len);
	appendStringInfoCharMacro(&g->json, ',');
	g->n++;
	g->offsets[g->n] = g->json.len;
	MemoryContextSwitchTo(old);
}

/* Bytes of measurement i written as JSON */
static int
m3ter_group_item_len(const M3terGroup *g, int i)
{
	return g->offsets[i + 1] - g->offsets[i] - 1;
}

/*
 * Add a measurement of len bytes to the request being packed (*bytes of
 * JSON so far, *items measurements); false when it does not fit, and then
 * it starts the next request alone.
 */
bool
m3ter_pack_item(int64 *bytes, int *items, int len)
{
	int64		add = len + (*items > 0 ? 1 : 0);

	if (*items < M3TER_MAX_MEASUREMENTS && *bytes + add < M3TER_MAX_PAYLOAD_BYTES)
	{
		*bytes += add;
		(*items)++;
		return true;
	}
	*bytes = M3TER_PAYLOAD_OVERHEAD + len;
	*items = 1;
	return false;
}

/* How many measurements from start fit one request (end index, exclusive) */
static int
pack(const M3terGroup *g, int start)
{
	int64		bytes = M3TER_PAYLOAD_OVERHEAD;
	int			items = 0;
	int			end = start;

	while (end < g->n && m3ter_pack_item(&bytes, &items, m3ter_group_item_len(g, end)))
		end++;
	return end;
}

/* A new send of measurements [start, end) of g */
static M3terSend *
new_send(M3terGroup *g, int start, int end)
{
	M3terSend  *send = MemoryContextAllocZero(g->cxt, sizeof(M3terSend));

	send->group = g;
	send->start = start;
	send->end = end;
	g->outstanding++;
	return send;
}

/*
 * Queue the group's measurements [start, end) in requests as full as the
 * limits allow.  A measurement too large for any request comes straight
 * back as done, with outcome M3TER_TOO_LARGE and status 0.
 */
void
m3ter_sender_queue(M3terSender *s, M3terGroup *g, int start, int end)
{
	while (start < end)
	{
		int			stop = Min(pack(g, start), end);
		M3terSend  *send;

		if (stop == start)
		{
			send = new_send(g, start, start + 1);
			send->result.outcome = M3TER_TOO_LARGE;
			send->result.message = MemoryContextStrdup(g->cxt,
													   psprintf("a request with this measurement alone would take %d bytes "
																"(%d of them the measurement as JSON); m3ter takes requests under %d bytes",
																m3ter_group_item_len(g, start) + M3TER_PAYLOAD_OVERHEAD,
																m3ter_group_item_len(g, start), M3TER_MAX_PAYLOAD_BYTES));
			dlist_push_tail(&s->done, &send->node);
			start++;
			continue;
		}
		send = new_send(g, start, stop);
		dlist_push_tail(&s->queued, &send->node);
		s->n_queued++;
		start = stop;
	}
}

/* Send it again after delay_ms (a transient fault) */
void
m3ter_sender_requeue(M3terSender *s, M3terSend *send, int delay_ms)
{
	send->tries++;
	send->not_before = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay_ms);
	send->refreshed = false;
	dlist_push_tail(&s->queued, &send->node);
	s->n_queued++;
}

/* Halve a request (n > 1) m3ter rejected or found too large: both halves are queued */
void
m3ter_sender_split(M3terSender *s, M3terSend *send)
{
	int			mid = send->start + (send->end - send->start) / 2;
	M3terSend  *first = new_send(send->group, send->start, mid);
	M3terSend  *second = new_send(send->group, mid, send->end);

	Assert(send->end - send->start > 1);
	/* halves go first, so a split finishes before new work */
	dlist_push_head(&s->queued, &second->node);
	dlist_push_head(&s->queued, &first->node);
	s->n_queued += 2;
	m3ter_sender_finish(s, send);
}

/* The owner is done with a send */
void
m3ter_sender_finish(M3terSender *s, M3terSend *send)
{
	send->group->outstanding--;
	pfree(send);
}

/* Stop: hand every queued send back, untried, with the stopping answer */
static void
stop(M3terSender *s, const M3terCallResult *why)
{
	dlist_mutable_iter it;

	if (!s->stopped)
	{
		s->stopped = true;
		s->stop = *why;
		s->stop.message = MemoryContextStrdup(TopMemoryContext,
											  why->message ? why->message : "refused");
		s->stop.body = NULL;
	}
	dlist_foreach_modify(it, &s->queued)
	{
		M3terSend  *send = dlist_container(M3terSend, node, it.cur);

		dlist_delete(&send->node);
		s->n_queued--;
		send->result = s->stop;
		send->untried = true;
		dlist_push_tail(&s->done, &send->node);
	}
}

/* Start one queued send with the given token */
static void
start(M3terSender *s, M3terSend *send, const char *token)
{
	M3terGroup *g = send->group;
	int			from = g->offsets[send->start];
	int			to = g->offsets[send->end] - 1;	/* without the last comma */
	StringInfoData payload;
	char	   *auth;

	initStringInfo(&payload);
	enlargeStringInfo(&payload, (to - from) + M3TER_PAYLOAD_OVERHEAD + 1);
	appendStringInfoString(&payload, "{\"measurements\":[");
	appendBinaryStringInfo(&payload, g->json.data + from, to - from);
	appendStringInfoString(&payload, "]}");
	auth = psprintf("Bearer %s", token);
	PG_TRY();
	{
		(void) m3ter_http_start("POST", s->url, auth, payload.data, payload.len, send);
	}
	PG_FINALLY();
	{
		explicit_bzero(auth, strlen(auth));
		pfree(auth);
		pfree(payload.data);
	}
	PG_END_TRY();
	send->token = MemoryContextStrdup(g->cxt, token);
	send->started_at = GetCurrentTimestamp();
	send->untried = false;
	s->n_in_flight++;
	s->requests++;
	s->measurements += send->end - send->start;
}

/*
 * Until when the wait for a failed token endpoint holds this sender (0: it
 * does not): the cluster's wait, or a synchronous call's own (it asks at
 * once, and gives up after m3ter.max_retries more tries)
 */
TimestampTz
m3ter_sender_token_wait(M3terSender *s)
{
	return m3ter_token_wait(s->token_retry_at, s->max_token_failures < 0);
}

/*
 * A bearer token for the sender (palloc'd; the caller wipes it), or NULL:
 * the token endpoint failed, and *wait_ms says when to ask again (the
 * cluster's growing wait, or a synchronous call's own), or -1 when the
 * sender stopped (a refusal, or a call's last try)
 */
static char *
sender_token(M3terSender *s, int *wait_ms)
{
	M3terCallResult why;
	char	   *token;

	memset(&why, 0, sizeof(why));
	why.retry_after_ms = -1;
	token = m3ter_token_get(&why);
	s->token_requests += why.requests;
	if (token != NULL)
	{
		s->token_failures = 0;
		return token;
	}
	if (why.outcome == M3TER_TRANSIENT &&
		(s->max_token_failures < 0 || s->token_failures < s->max_token_failures))
	{
		/* the token endpoint is down: wait (from its answer, not the ask), spend nothing */
		TimestampTz now = GetCurrentTimestamp();

		s->token_retry_at = s->max_token_failures < 0 ? m3ter_token_wait(0, true) :
			TimestampTzPlusMilliseconds(now, m3ter_backoff_ms(s->token_failures, why.retry_after_ms));
		s->token_failures++;
		s->last_error = MemoryContextStrdup(TopMemoryContext,
											psprintf("the token endpoint failed: %s",
													 why.message ? why.message : "no answer"));
		*wait_ms = (int) TimestampDifferenceMilliseconds(now, s->token_retry_at);
		return NULL;
	}
	why.retries = s->token_failures;
	stop(s, &why);
	*wait_ms = -1;
	return NULL;
}

/*
 * After the token endpoint failed (and no token was had since), ask it
 * before rows are claimed for the sender (when ask): rows claimed would
 * wait in flight through the ask (up to m3ter.request_timeout) and a wait
 * after it.  True when a token is at hand (or no failure is known); false
 * when the wait holds (*until says till when), the ask failed (likewise)
 * or the sender stopped (*until 0).
 */
bool
m3ter_sender_token_ready(M3terSender *s, bool ask, TimestampTz *until)
{
	char	   *token;
	int			wait_ms;

	*until = 0;
	if (s->stopped)
		return false;
	if (m3ter_token_failure(NULL, 0) == 0)
		return true;
	s->token_retry_at = *until = m3ter_sender_token_wait(s);
	if (*until != 0)
		return false;
	if (!ask)
		return true;
	token = sender_token(s, &wait_ms);
	if (token == NULL)
	{
		*until = wait_ms < 0 ? 0 : s->token_retry_at;
		return false;
	}
	explicit_bzero(token, strlen(token));
	pfree(token);
	return true;
}

/*
 * Start the queued sends that may go now: fewer than max_in_flight
 * running, their delay over, a pacing slot free.  Returns how long until
 * the next one may start (ms; -1 when none waits).
 */
static int
start_due(M3terSender *s)
{
	TimestampTz now = GetCurrentTimestamp();
	char	   *token = NULL;
	int			next_ms = -1;
	dlist_mutable_iter it;

	if (s->stopped)
	{
		/* what was queued again after the stop (a retry, a split) goes back too */
		stop(s, &s->stop);
		return -1;
	}
	if (s->n_queued == 0)
		return -1;
	s->token_retry_at = m3ter_sender_token_wait(s);
	if (s->token_retry_at > now)
		return (int) TimestampDifferenceMilliseconds(now, s->token_retry_at);

	dlist_foreach_modify(it, &s->queued)
	{
		M3terSend  *send = dlist_container(M3terSend, node, it.cur);
		int			wait_ms;

		if (s->n_in_flight >= s->max_in_flight)
			break;
		if (send->not_before > now)
		{
			int			ms = (int) TimestampDifferenceMilliseconds(now, send->not_before);

			next_ms = next_ms < 0 ? ms : Min(next_ms, ms);
			continue;
		}
		if (s->gives_up_when_throttled)
		{
			M3terCallResult held = {.retry_after_ms = -1};

			/* a call from SQL waits out 429s that go on no longer than its own retry would */
			if (m3ter_throttled_now(M3TER_INGEST_API, &held) && m3ter_waits_too_long(&held, send->tries))
			{
				stop(s, &held);
				break;
			}
		}
		if (token == NULL && (token = sender_token(s, &next_ms)) == NULL)
			return next_ms;
		if (!m3ter_pace_try(M3TER_INGEST_API, 0, &wait_ms))
		{
			next_ms = next_ms < 0 ? wait_ms : Min(next_ms, wait_ms);
			break;
		}
		dlist_delete(&send->node);
		s->n_queued--;
		start(s, send, token);
	}
	if (token != NULL)
	{
		explicit_bzero(token, strlen(token));
		pfree(token);
	}
	return next_ms;
}

/* Handle one finished request: retry with a fresh token, or hand it back */
static void
answered(M3terSender *s, M3terSend *send, M3terHttpResponse *resp)
{
	MemoryContext old = MemoryContextSwitchTo(send->group->cxt);

	/* the answer lives as long as the send: collect() allocated it in a passing context */
	resp->body = memcpy(palloc(resp->body_len + 1), resp->body, resp->body_len + 1);
	if (resp->transport_error != NULL)
		resp->transport_error = pstrdup(resp->transport_error);
	s->n_in_flight--;
	memset(&send->result, 0, sizeof(send->result));
	send->result.retry_after_ms = -1;
	send->result.requests = 1;
	m3ter_take_answer(M3TER_INGEST_API, resp, send->started_at, &send->result);
	MemoryContextSwitchTo(old);

	if (send->result.outcome == M3TER_FORBIDDEN && !send->refreshed)
	{
		/* the token may have expired or been revoked: once more with a new one */
		m3ter_token_forget(send->token);
		send->refreshed = true;
		dlist_push_head(&s->queued, &send->node);
		s->n_queued++;
		return;
	}
	if (send->result.outcome == M3TER_FORBIDDEN || send->result.outcome == M3TER_UNEXPECTED)
		stop(s, &send->result);
	dlist_push_tail(&s->done, &send->node);
}

/*
 * Start what may start, then wait up to wait_ms for answers (less when one
 * arrives, the latch is set, or a queued send falls due).  Finished sends
 * are then available from m3ter_sender_next_done().
 */
void
m3ter_sender_pump(M3terSender *s, int wait_ms)
{
	int64		started = s->requests;
	int			next_ms = start_due(s);
	M3terHttpResponse resp;
	void	   *tag;

	if (next_ms >= 0)
		wait_ms = Min(wait_ms, Max(next_ms, 1));
	if (dlist_is_empty(&s->done) && s->n_in_flight > 0)
		(void) m3ter_http_wait(wait_ms);
	else if (dlist_is_empty(&s->done) && next_ms > 0)
		m3ter_sleep_ms(wait_ms);	/* only delayed sends (a retry's back-off): no busy loop */
	while (m3ter_http_collect(&resp, &tag))
	{
		if (tag == NULL)
			continue;			/* not ours: a synchronous call collects its own */
		answered(s, (M3terSend *) tag, &resp);
	}
	(void) start_due(s);
	if (s->requests != started)
		(void) m3ter_http_wait(0);	/* on the wire now, not after the owner's next work */
}

/* The next finished send, or NULL */
M3terSend *
m3ter_sender_next_done(M3terSender *s)
{
	if (dlist_is_empty(&s->done))
		return NULL;
	return dlist_container(M3terSend, node, dlist_pop_head_node(&s->done));
}

/* Are answered sends waiting for the owner? */
bool
m3ter_sender_has_done(M3terSender *s)
{
	return !dlist_is_empty(&s->done);
}

/* Queued sends that may start as soon as a pacing slot is free */
int
m3ter_sender_ready(const M3terSender *s)
{
	TimestampTz now = GetCurrentTimestamp();
	dlist_iter	it;
	int			n = 0;

	dlist_foreach(it, (dlist_head *) &s->queued)
	{
		M3terSend  *send = dlist_container(M3terSend, node, it.cur);

		if (send->not_before <= now)
			n++;
	}
	return n;
}

/*
 * Take the next send not running out of the queue (NULL when none): its
 * owner hands its measurements back.  None of them is at m3ter: a queued
 * send has not started, or its last try was refused (a 429, a rejected
 * request that was split).
 */
M3terSend *
m3ter_sender_take_queued(M3terSender *s)
{
	M3terSend  *send;

	if (dlist_is_empty(&s->queued))
		return NULL;
	send = dlist_container(M3terSend, node, dlist_pop_head_node(&s->queued));
	s->n_queued--;
	return send;
}

/* Sends queued or running */
int
m3ter_sender_busy(const M3terSender *s)
{
	return s->n_queued + s->n_in_flight;
}

/* Abandon every request (error paths); the groups are the owner's to free */
void
m3ter_sender_abort(M3terSender *s)
{
	m3ter_http_abort_all();
	dlist_init(&s->queued);
	dlist_init(&s->done);
	s->n_queued = 0;
	s->n_in_flight = 0;
}

