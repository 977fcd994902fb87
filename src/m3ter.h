/*-------------------------------------------------------------------------
 *
 * m3ter.h
 *		Declarations shared by the modules of the m3ter extension.
 *
 * The extension is split by concern.  Entry points (SQL-callable functions by topic, the worker) sit on top;
 * each file only calls files below it in this list:
 *	m3ter.c			module entry, settings (GUCs)
 *	submit.c		m3ter_submit()
 *	meter.c			Config API functions (meters, organization config)
 *	flush.c			m3ter_flush() and CALL m3ter.flush()
 *	status.c		m3ter_worker_status() and the statistics
 *	launcher.c		the launcher: one worker per database with the extension
 *	standby.c		refusing writes on a standby, clearly
 *	worker.c		the background worker loop
 *	outbox_check.c	the CHECK constraint of m3ter.outbox
 *	delivery.c		the outbox delivery loop: claims, sender, outcomes
 *	outbox.c		the outbox's SQL: claims, in-flight records, status writes
 *	claim_state.c	the frontier of fresh-row claims and the gaps behind it
 *	events.c		ingest failure events written back to the outbox
 *	catalog.c		the catalog synced from m3ter, checks before sending
 *	sender.c		the one delivery path: requests in flight, splits
 *	client.c		answers classified, the synchronous Config API call
 *	token.c			the cluster's bearer token
 *	pacing.c		m3ter's rate limits, shared by the cluster
 *	credentials.c	the credentials: settings or m3ter.credentials_file
 *	version.c		the installed SQL version against the library's
 *	measurement.c	measurement validation and compact JSON
 *	http.c			HTTP over libcurl's multi interface
 *	json.c			cJSON helpers; text between the database encoding and UTF-8
 *	shmem.c			shared memory: worker latch and figures
 *
 * Everything here runs inside one backend (or a background worker) and
 * is single-threaded; libcurl is used through a per-process multi handle.
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_H
#define M3TER_H

#include "postgres.h"

#include "compat.h"

#include "executor/spi.h"
#include "lib/ilist.h"
#include "lib/stringinfo.h"
#include "utils/guc.h"
#include "utils/portal.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#define M3TER_VERSION "1.2"

/* Limits of the Ingest API: 1..1000 measurements, payload under 512,000 bytes */
#define M3TER_MAX_MEASUREMENTS	1000
#define M3TER_MAX_PAYLOAD_BYTES 512000

/* SQLSTATEs for failures reported by (or on the way to) m3ter: class M3 */
#define ERRCODE_M3TER_NETWORK		MAKE_SQLSTATE('M','3','0','0','0')
#define ERRCODE_M3TER_AUTH			MAKE_SQLSTATE('M','3','4','0','1')
#define ERRCODE_M3TER_BAD_REQUEST	MAKE_SQLSTATE('M','3','4','0','0')
#define ERRCODE_M3TER_FORBIDDEN		MAKE_SQLSTATE('M','3','4','0','3')
#define ERRCODE_M3TER_NOT_FOUND		MAKE_SQLSTATE('M','3','4','0','4')
#define ERRCODE_M3TER_TOO_LARGE		MAKE_SQLSTATE('M','3','4','1','3')
#define ERRCODE_M3TER_RATE_LIMITED	MAKE_SQLSTATE('M','3','4','2','9')
#define ERRCODE_M3TER_SERVER		MAKE_SQLSTATE('M','3','5','0','0')
#define ERRCODE_M3TER_UNEXPECTED	MAKE_SQLSTATE('M','3','3','0','0')
/* A function that writes was called on a standby (server in recovery) */
#define ERRCODE_M3TER_STANDBY		MAKE_SQLSTATE('M','3','R','0','1')

/* ---- m3ter.c: settings ---- */
extern char *m3ter_org_id;
extern char *m3ter_access_key_id;
extern char *m3ter_api_secret;
extern char *m3ter_credentials_file;
extern char *m3ter_api_url;
extern char *m3ter_ingest_url;
extern int	m3ter_request_timeout_ms;
extern int	m3ter_connect_timeout_ms;
extern bool m3ter_tls_verify;
extern int	m3ter_max_retries;
extern int	m3ter_retry_max_delay_ms;
extern int	m3ter_max_requests_per_second;
extern int	m3ter_max_requests_per_5min;
extern int	m3ter_max_in_flight;
extern int	m3ter_claim_bytes;
extern int	m3ter_max_attempts;
extern int	m3ter_give_up_after_s;
extern int	m3ter_resend_window_s;
extern int	m3ter_batch_rows;
extern char *m3ter_test_fault_uid;
extern char *m3ter_database;
extern bool m3ter_worker_enabled;
extern int	m3ter_worker_naptime_ms;
extern int	m3ter_worker_idle_naptime_ms;
extern int	m3ter_retention_s;

extern void m3ter_define_settings(void);
extern const char *m3ter_require_org_id(void);

/* ---- http.c ---- */
typedef struct M3terHttpResponse
{
	long		status;			/* HTTP status, 0 when no response came */
	char	   *body;			/* palloc'd, NUL-terminated, never NULL */
	size_t		body_len;
	int			retry_after_ms; /* from Retry-After, -1 when absent */
	char	   *transport_error;	/* why no response came, else NULL */
	bool		bad_url;		/* ... because the URL cannot be used */
} M3terHttpResponse;

typedef struct M3terHttpRequest M3terHttpRequest;

extern M3terHttpRequest *m3ter_http_start(const char *method, const char *url,
										  const char *authorization,
										  const char *body, size_t body_len,
										  void *tag);
extern int	m3ter_http_wait(int timeout_ms);
extern void m3ter_exit_if_orphaned(void);

/* subscriber.c */
extern char *m3ter_outbox_subscription(void);
extern void m3ter_require_not_subscribed(const char *what);
extern bool m3ter_http_collect(M3terHttpResponse *response, void **tag);
extern void m3ter_http_abort_all(void);
extern void m3ter_http_exchange(const char *method, const char *url,
								const char *authorization,
								const char *body, size_t body_len,
								M3terHttpResponse *response);

/* ---- json.c: text between the database encoding and m3ter's UTF-8 ---- */
extern char *m3ter_utf8_to_server(const char *s, int len);
extern char *m3ter_server_to_utf8(const char *s, int len, const char *what);

/* ---- credentials.c ---- */
extern char *m3ter_basic_credentials(void);
extern void m3ter_require_credentials(void);
extern uint32 m3ter_credentials_fingerprint(void);
extern void m3ter_credentials_file_changed(void);

/* ---- version.c ---- */
extern void m3ter_require_installed_version(void);
extern bool m3ter_installed_version_ok(char **why);
extern bool m3ter_lock_extension(void);

/* ---- client.c ---- */
typedef enum M3terApi
{
	M3TER_CONFIG_API,
	M3TER_INGEST_API
} M3terApi;

typedef enum M3terOutcome
{
	M3TER_OK,					/* 2xx */
	M3TER_TRANSIENT,			/* 408, 429, 500, 502-504, network: try later */
	M3TER_REJECTED,				/* 400 with m3ter's JSON error: the content */
	M3TER_TOO_LARGE,			/* 413, or 403 for the payload size: narrow it */
	M3TER_FORBIDDEN,			/* 401, 403: the token, else the configuration */
	M3TER_AUTH_FAILED,			/* the token endpoint refused the credentials */
	M3TER_UNEXPECTED			/* 3xx, 404, 405, other: not the rows' fault */
} M3terOutcome;

typedef struct M3terCallResult
{
	M3terOutcome outcome;
	long		status;
	char	   *body;			/* response body (palloc'd) */
	char	   *message;		/* the server's message or the local reason */
	int			requests;		/* HTTP requests made, token requests included */
	int			retry_after_ms; /* last Retry-After seen, -1 when none */
	int			retries;		/* times the call was tried again after a transient fault */
} M3terCallResult;

extern char *m3ter_api_base(M3terApi api);
extern void m3ter_classify(const M3terHttpResponse *resp, M3terCallResult *result);
extern void m3ter_send_once(M3terApi api, const char *method, const char *url,
							char *authorization, const char *body, size_t body_len,
							M3terCallResult *result);
extern int	m3ter_call_sqlstate(const M3terCallResult *result, const char **hint);
extern void m3ter_call(M3terApi api, const char *method, const char *path,
					   const char *body, size_t body_len, int max_retries,
					   M3terCallResult *result);
pg_noreturn extern void m3ter_raise_call_error(const M3terCallResult *result,
											   const char *what);
extern int	m3ter_backoff_ms(int attempt, int retry_after_ms);
extern void m3ter_sleep_ms(int ms);
extern char *m3ter_org_path(const char *suffix);
extern char *m3ter_url_encode(const char *s);

/* ---- token.c ---- */
extern Size m3ter_token_shmem_size(void);
extern void m3ter_token_shmem_init(void);
extern char *m3ter_token_get(M3terCallResult *result);
extern void m3ter_token_forget(const char *token);

/* ---- pacing.c ---- */
extern Size m3ter_pacing_shmem_size(void);
extern void m3ter_pacing_shmem_init(void);
extern bool m3ter_pace_try(M3terApi api, int horizon_ms, int *wait_ms);
extern void m3ter_pace(M3terApi api);
extern void m3ter_pace_feedback(M3terApi api, long status, int retry_after_ms, TimestampTz sent_at);

/* ---- measurement.c ---- */
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

extern const char *m3ter_check_code(const char *s, int len, int maxlen);
/* The longest uid, in bytes */
#define M3TER_UID_MAX_BYTES 512
extern const char *m3ter_check_uid(const char *s, int len);
extern const char *m3ter_check_map(Jsonb *map, M3terMapKind kind,
								   const char **key, int *keylen);
extern bool m3ter_valid_iso8601(const char *s);
extern bool m3ter_timestamp_in_range(TimestampTz ts);
extern void m3ter_format_timestamp(TimestampTz ts, char *buf, size_t buflen);
extern void m3ter_append_measurement(StringInfo buf, const M3terMeasurement *m);

/* ---- uid.c ---- */
extern char *m3ter_new_uid(void);

#define M3TER_PAYLOAD_OVERHEAD ((int) sizeof("{\"measurements\":[]}") - 1)

/* ---- sender.c ---- */

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
	int			token_failures;
	bool		stopped;		/* a configuration fault: start nothing */
	M3terCallResult stop;		/* ... and the answer that said so */
	char	   *last_error;
	int64		requests;		/* ingest requests started */
	int64		measurements;	/* measurements in them */
	int64		token_requests;
} M3terSender;

extern void m3ter_sender_init(M3terSender *s, int max_in_flight);
extern void m3ter_sender_free(M3terSender *s);
extern void m3ter_group_init(M3terGroup *g, MemoryContext parent, int capacity);
extern void m3ter_group_add(M3terGroup *g, const char *item, int len);
extern bool m3ter_pack_item(int64 *bytes, int *items, int len);
extern int	m3ter_group_item_len(const M3terGroup *g, int i);
extern void m3ter_sender_queue(M3terSender *s, M3terGroup *g, int start, int end);
extern void m3ter_sender_requeue(M3terSender *s, M3terSend *send, int delay_ms);
extern void m3ter_sender_split(M3terSender *s, M3terSend *send);
extern void m3ter_sender_finish(M3terSender *s, M3terSend *send);
extern void m3ter_sender_pump(M3terSender *s, int wait_ms);
extern int	m3ter_sender_ready(const M3terSender *s);
extern M3terSend *m3ter_sender_next_done(M3terSender *s);
extern bool m3ter_sender_has_done(M3terSender *s);
extern int	m3ter_sender_busy(const M3terSender *s);
extern void m3ter_sender_abort(M3terSender *s);

/* ---- catalog.c ---- */
extern void m3ter_catalog_prepare(void);
extern const char *m3ter_catalog_verdict(const M3terMeasurement *m, bool *hold);

/* ---- claim_state.c ---- */
typedef struct M3terClaimState
{
	int64		frontier;		/* fresh rows are claimed after this id */
	int			n_gaps;			/* ids gap_lo[i]..gap_hi[i] to read again */
	int			cap_gaps;
	int64	   *gap_lo;
	int64	   *gap_hi;
	int64		sample_id;		/* gaps up to it settle when ... (0: none) */
	int			n_vxids;		/* ... these transactions have ended */
	int64	   *vxids;
	bool		changed;
	int64		seq_seen;		/* the sequence's last id when read */
	int64		sweep_from;		/* the next sweep goes on after this id ... */
	int64		sweep_rows;		/* ... over this many rows (0: not due yet) */
} M3terClaimState;

/*
 * A sweep behind the frontier (m3ter_outbox_sweep) is due this long after
 * the last, and walks this many rows for each second since, up to a limit
 */
#define M3TER_SWEEP_INTERVAL_S 10
#define M3TER_SWEEP_ROWS_PER_S 1000
#define M3TER_SWEEP_MAX_ROWS 100000

extern void m3ter_claim_state_read(M3terClaimState *s);
extern void m3ter_claim_state_write(M3terClaimState *s);
extern void m3ter_claim_state_add_gap(M3terClaimState *s, int64 lo, int64 hi);
extern void m3ter_claim_state_drop_ids(M3terClaimState *s, const int64 *seen, int n);
extern bool m3ter_claim_state_sample_ended(const M3terClaimState *s);
extern void m3ter_claim_state_settle(M3terClaimState *s, bool ended);
extern TimestampTz m3ter_claim_state_recheck_at(void);

/* ---- outbox.c ---- */
extern SPIPlanPtr m3ter_keep_plan(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes);
extern Datum m3ter_int8_array(const int64 *values, int n);
typedef enum M3terRowUpdate
{
	M3TER_ROWS_ACCEPTED,		/* m3ter accepted them */
	M3TER_ROWS_FAILED,			/* never to be sent again */
	M3TER_ROWS_RETRY,			/* a transient fault: try later, or give up */
	M3TER_ROWS_HELD,			/* not their fault: note it, keep them pending */
	M3TER_ROWS_CHECK_HELD,		/* held by a check before sending: pending, later */
	M3TER_ROWS_DEFER			/* not due yet: wait in the deferred index */
} M3terRowUpdate;

/* Where a claimed row came from (the claim query's parts) */
typedef enum M3terClaimPart
{
	M3TER_PART_DEFERRED = 1,	/* due after a retry, a hold or a schedule */
	M3TER_PART_GAP = 2,			/* an id passed before its row was visible */
	M3TER_PART_FRESH = 3		/* after the frontier */
} M3terClaimPart;

/* What a claim may do with a row it read */
typedef enum M3terRowState
{
	M3TER_ROW_TAKE = 0,			/* pending and due: send it */
	M3TER_ROW_PASS = 1,			/* done, or deferred (the other part has it) */
	M3TER_ROW_NOT_DUE = 2		/* fresh but not due yet: defer it */
} M3terRowState;

/* One claimed row */
typedef struct M3terOutboxRow
{
	int64		id;
	int32		attempts;
	TimestampTz due;
	TimestampTz created_at;
	M3terMeasurement m;
	char		ts[40];
	char		ets[40];
} M3terOutboxRow;

extern bool m3ter_outbox_lock_claims(void);
extern int64 m3ter_outbox_clean_inflight(const int64 *live_ids, int n_live);
extern int64 *m3ter_outbox_others_inflight(int *n);
extern Portal m3ter_outbox_open_claim(TimestampTz after_due, int64 after_id, int64 limit,
									  const struct M3terClaimState *state);
extern void m3ter_outbox_peek_row(HeapTuple tup, TupleDesc desc, M3terOutboxRow *row,
								  M3terClaimPart *part, M3terRowState *state);
extern void m3ter_outbox_read_row(M3terOutboxRow *row, int64 *reading);
extern int64 m3ter_outbox_record_inflight(const int64 *ids, int n);
extern void m3ter_outbox_release(int64 record_id);
extern bool m3ter_outbox_record_exists(int64 record_id);
extern int64 m3ter_outbox_write(M3terRowUpdate which, const int64 *ids, int n,
								long http_status, const char *error, int sent,
								int retry_after_ms, bool throttled);
extern void m3ter_outbox_fail_row(int64 id, const char *why);
extern TimestampTz m3ter_outbox_next_due(void);
extern bool m3ter_outbox_delete_expired(int retention_s);
extern int64 m3ter_outbox_sweep(M3terClaimState *s);

/* ---- delivery.c ---- */
typedef struct M3terFlushStats
{
	int64		claimed;		/* rows claimed */
	int64		accepted;		/* rows m3ter accepted */
	int64		failed;			/* rows marked failed */
	int64		retried;		/* rows left pending for a later attempt */
	int64		requests;		/* ingest requests made */
	int64		sent;			/* measurements sent, re-sends included */
	int64		resent;			/* measurements sent again after an earlier send */
	int64		throttled;		/* 429s waited out in memory */
	int64		orphaned;		/* rows of stale in-flight records */
	bool		stopped;		/* a configuration fault stopped delivery */
	int			stop_sqlstate;	/* the SQLSTATE of what stopped it (as a call raises) */
	char	   *error;			/* the last error seen, or NULL */
} M3terFlushStats;

typedef enum M3terTxnMode
{
	M3TER_TXN_WORKER,			/* the worker: a transaction per unit of work */
	M3TER_TXN_PROCEDURE,		/* CALL m3ter.flush(): SPI_commit() per unit */
	M3TER_TXN_CALLER			/* m3ter_flush(): all in the caller's transaction */
} M3terTxnMode;

typedef struct M3terDelivery
{
	M3terTxnMode mode;
	MemoryContext cxt;
	M3terSender sender;
	dlist_head	claims;
	int			n_claims;
	TimestampTz cursor_due;		/* keyset position of the claims */
	int64		cursor_id;
	bool		wrapped;		/* the last claim started from the front */
	bool		wrap_wanted;	/* start over once nothing is in flight */
	bool		exhausted;		/* a pass from the front found nothing due */
	bool		claim_lock_busy;	/* an atomic flush holds the claim lock */
	TimestampTz next_claim_at;	/* after a part-full request: claim from then on */
	int64		max_rows;		/* stop after claiming this many (0: no limit) */
	M3terFlushStats stats;
} M3terDelivery;

extern void m3ter_delivery_start(M3terDelivery *d, M3terTxnMode mode, int64 max_rows);
extern bool m3ter_delivery_step(M3terDelivery *d, int wait_ms);
extern void m3ter_delivery_end(M3terDelivery *d);
extern bool m3ter_delivery_claim_failed(M3terTxnMode mode, const char *message);

/* ---- shmem.c ---- */
extern void m3ter_shmem_install(void);
extern void m3ter_wake_worker_at_commit(void);
extern void m3ter_note_delivery(const M3terFlushStats *stats);

/* ---- launcher.c ---- */
extern void m3ter_launcher_install(void);
extern bool m3ter_check_database_list(char **newval, void **extra, GucSource source);

/* ---- standby.c ---- */
extern void m3ter_require_primary(const char *what);

/* ---- catalog.c, events.c: what m3ter really ingested ---- */
typedef enum M3terUnknownAccounts
{
	M3TER_ACCOUNTS_SEND,		/* send: m3ter auto-creates "<code>-autocreated" */
	M3TER_ACCOUNTS_HOLD,		/* keep the row pending with a reason */
	M3TER_ACCOUNTS_FAIL			/* mark the row failed */
} M3terUnknownAccounts;

extern bool m3ter_catalog_checks;
extern int	m3ter_unknown_accounts;
extern int	m3ter_catalog_max_age_s;
extern int	m3ter_catalog_refresh_interval_s;
extern int	m3ter_events_poll_interval_s;

extern void m3ter_define_ingest_settings(void);
extern void m3ter_catalog_shmem_install(void);
extern void m3ter_catalog_prepare(void);
extern const char *m3ter_catalog_verdict(const M3terMeasurement *m, bool *hold);
extern void m3ter_catalog_sync(bool accounts, int max_retries, StringInfo out);
extern void m3ter_catalog_note_error(const char *message);
extern bool m3ter_events_poll_if_due(bool rows_due);
extern bool m3ter_has_relation(const char *relname);

#endif							/* M3TER_H */
