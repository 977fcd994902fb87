/*-------------------------------------------------------------------------
 *
 * sender.h
 *		The one delivery path: requests in flight, splits (sender.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_CLIENT_SENDER_H
#define M3TER_CLIENT_SENDER_H

#include "datatype/timestamp.h"
#include "lib/ilist.h"
#include "lib/stringinfo.h"
#include "client/request.h"

/* Measurements written as JSON, one buffer, comma after each */
typedef struct M3terGroup
{
	MemoryContext cxt;			/* everything of the group, sends included */
	StringInfoData json;
	int		   *offsets;		/* item i is json[offsets[i] .. offsets[i+1] - 1) */
	int			n;
	int			capacity;
	int			outstanding;	/* sends not yet finished */
} M3terGroup;

/* One request's worth of a group: measurements [start, end) */
typedef struct M3terSend
{
	dlist_node	node;
	M3terGroup *group;
	int			start;
	int			end;
	int			tries;			/* times sent again after a transient fault */
	bool		refreshed;		/* a fresh token was tried */
	bool		untried;		/* handed back without being sent (a stop) */
	TimestampTz not_before;
	TimestampTz started_at;		/* when it was last sent */
	char	   *token;			/* the token it went with */
	M3terCallResult result;		/* the classified answer, once done */
} M3terSend;

typedef struct M3terSender
{
	dlist_head	queued;			/* not started */
	dlist_head	done;			/* answered, for the owner */
	int			n_queued;
	int			n_in_flight;
	int			max_in_flight;
	char	   *url;
	TimestampTz token_retry_at; /* the token endpoint failed: wait until then */
	int			token_failures; /* ... after this many failures of this sender in a row */
	int			max_token_failures; /* then give up (a synchronous call); -1: never */
	bool		gives_up_when_throttled;	/* a synchronous call: not while 429s go on */
	bool		stopped;		/* a configuration fault: start nothing */
	M3terCallResult stop;		/* ... and the answer that said so */
	char	   *last_error;
	int64		requests;		/* ingest requests started */
	int64		measurements;	/* measurements in them */
	int64		token_requests;
} M3terSender;

extern void m3ter_sender_init(M3terSender *s, int max_in_flight);
extern void m3ter_sender_free(M3terSender *s);
extern TimestampTz m3ter_sender_token_wait(M3terSender *s);
extern bool m3ter_sender_token_ready(M3terSender *s, bool ask, TimestampTz *until);
extern void m3ter_group_init(M3terGroup *g, MemoryContext parent, int capacity);
extern void m3ter_group_add(M3terGroup *g, const char *item, int len);
extern bool m3ter_pack_item(int64 *bytes, int *items, int len);
extern void m3ter_sender_queue(M3terSender *s, M3terGroup *g, int start, int end);
extern void m3ter_sender_requeue(M3terSender *s, M3terSend *send, int delay_ms);
extern void m3ter_sender_split(M3terSender *s, M3terSend *send);
extern void m3ter_sender_finish(M3terSender *s, M3terSend *send);
extern void m3ter_sender_pump(M3terSender *s, int wait_ms);
extern int	m3ter_sender_ready(const M3terSender *s);
extern M3terSend *m3ter_sender_take_queued(M3terSender *s);
extern M3terSend *m3ter_sender_next_done(M3terSender *s);
extern bool m3ter_sender_has_done(M3terSender *s);
extern int	m3ter_sender_busy(const M3terSender *s);
extern void m3ter_sender_abort(M3terSender *s);

#endif							/* M3TER_CLIENT_SENDER_H */
