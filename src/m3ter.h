/*-------------------------------------------------------------------------
 *
 * m3ter.h
 *		Declarations shared by the modules of the m3ter extension.
 *
 * The extension is split by concern:
 *	m3ter.c			module entry, settings (GUCs)
 *	json.c			cJSON memory hooks and answer helpers
 *	http.c			one HTTP exchange over libcurl, interruptible
 *	oauth.c			OAuth2 client-credentials token cache
 *	client.c		m3ter's error and retry rules around http.c, pacing
 *	measurement.c	measurement validation, compact JSON and request packing
 *	meter.c			Config API functions (meters, organization config)
 *	submit.c		m3ter_submit()
 *	outbox.c		draining m3ter.outbox (m3ter_flush() and the worker)
 *	outbox_check.c	the CHECK constraint of m3ter.outbox
 *	shmem.c			shared state: pacing, worker latch and figures
 *	worker.c		the background worker loop
 *	catalog.c		the catalog synced from m3ter, checks before sending
 *	events.c		ingest failure events written back to the outbox
 *
 * Everything here runs inside one backend (or the background worker)
 * and is single-threaded; libcurl is used through a per-process handle.
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_H
#define M3TER_H

#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

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

/* ---- m3ter.c: settings ---- */
extern char *m3ter_org_id;
extern char *m3ter_access_key_id;
extern char *m3ter_api_secret;
extern char *m3ter_api_url;
extern char *m3ter_ingest_url;
extern int	m3ter_request_timeout_ms;
extern int	m3ter_connect_timeout_ms;
extern bool m3ter_tls_verify;
extern int	m3ter_max_retries;
extern int	m3ter_retry_max_delay_ms;
extern int	m3ter_max_requests_per_second;
extern int	m3ter_max_attempts;
extern int	m3ter_batch_rows;
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
} M3terHttpResponse;

extern void m3ter_http_exchange(const char *method, const char *url,
								const char *authorization,
								const char *body, size_t body_len,
								M3terHttpResponse *response);

/* ---- oauth.c ---- */
extern const char *m3ter_cached_token(void);
extern void m3ter_store_token(const char *token, int expires_in_s);
extern void m3ter_forget_token(void);
extern char *m3ter_basic_credentials(void);
extern void m3ter_require_credentials(void);

/* ---- client.c ---- */
typedef enum M3terApi
{
	M3TER_CONFIG_API,
	M3TER_INGEST_API
} M3terApi;

typedef enum M3terOutcome
{
	M3TER_OK,					/* 2xx */
	M3TER_TRANSIENT,			/* 429, 5xx, network: worth trying later */
	M3TER_REJECTED,				/* 400, 404, other 4xx: fix the request */
	M3TER_TOO_LARGE,			/* 413: narrow the request */
	M3TER_FORBIDDEN,			/* 403 even with a fresh token */
	M3TER_AUTH_FAILED			/* the token endpoint refused the credentials */
} M3terOutcome;

typedef struct M3terCallResult
{
	M3terOutcome outcome;
	long		status;
	char	   *body;			/* response body (palloc'd) */
	char	   *message;		/* the server's message or the local reason */
	int			requests;		/* HTTP requests made, token requests included */
	int			retry_after_ms; /* last Retry-After seen, -1 when none */
} M3terCallResult;

extern void m3ter_call(M3terApi api, const char *method, const char *path,
					   const char *body, size_t body_len, int max_retries,
					   M3terCallResult *result);
extern void m3ter_raise_call_error(const M3terCallResult *result,
								   const char *what) pg_attribute_noreturn();
extern int	m3ter_backoff_ms(int attempt, int retry_after_ms);
extern void m3ter_sleep_ms(int ms);
extern char *m3ter_org_path(const char *suffix);

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
extern const char *m3ter_check_map(Jsonb *map, M3terMapKind kind,
								   const char **key, int *keylen);
extern bool m3ter_valid_iso8601(const char *s);
extern bool m3ter_timestamp_in_range(TimestampTz ts);
extern void m3ter_format_timestamp(TimestampTz ts, char *buf, size_t buflen);
extern void m3ter_append_measurement(StringInfo buf, const M3terMeasurement *m);
extern int	m3ter_pack_request(const int *lengths, int start, int n);
extern void m3ter_build_payload(StringInfo payload, char *const *items,
								int start, int end);
extern char *m3ter_new_uid(void);

#define M3TER_PAYLOAD_OVERHEAD ((int) sizeof("{\"measurements\":[]}") - 1)

/* ---- outbox.c ---- */
typedef struct M3terFlushStats
{
	int64		claimed;		/* rows claimed */
	int64		accepted;		/* rows m3ter accepted */
	int64		failed;			/* rows marked failed */
	int64		retried;		/* rows left pending for a later attempt */
	int64		requests;		/* HTTP requests made */
	int64		sent;			/* measurements sent, re-sends included */
	bool		stopped;		/* m3ter refused the credentials or the org */
	char	   *error;			/* the last error seen, or NULL */
} M3terFlushStats;

extern void m3ter_drain_once(int limit, int64 *after, M3terFlushStats *stats);
extern TimestampTz m3ter_next_due(void);
extern int64 m3ter_delete_expired(int retention_s);

/* ---- shmem.c ---- */
extern void m3ter_shmem_install(void);
extern void m3ter_wake_worker_at_commit(void);
extern void m3ter_pace(M3terApi api);
extern void m3ter_note_delivery(const M3terFlushStats *stats);

/* ---- worker.c ---- */
extern void m3ter_register_worker(void);

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
extern void m3ter_events_poll_if_due(void);
extern char *m3ter_url_encode(const char *s);
extern bool m3ter_has_relation(const char *relname);

#endif							/* M3TER_H */
