/*-------------------------------------------------------------------------
 *
 * settings.h
 *		Every m3ter.* setting (settings.c): read by every layer.
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_GROUND_SETTINGS_H
#define M3TER_GROUND_SETTINGS_H

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
extern int	m3ter_requests_window_s;
extern int	m3ter_max_in_flight;
extern int	m3ter_claim_bytes;
extern int	m3ter_max_attempts;
extern int	m3ter_give_up_after_s;
extern int	m3ter_resend_window_s;
extern int	m3ter_batch_rows;
#ifdef M3TER_TEST_HOOKS
extern char *m3ter_test_fault_uid;
#endif
extern char *m3ter_database;
extern bool m3ter_worker_enabled;
extern int	m3ter_worker_naptime_ms;
extern int	m3ter_worker_idle_naptime_ms;
extern int	m3ter_retention_s;

extern int	m3ter_max_databases;
/* counts changes of m3ter.credentials_file: credentials.c reads the file again */
extern uint32 m3ter_credentials_file_generation;
extern int	m3ter_reconcile_interval_s;
extern int	m3ter_reconcile_lag_s;
extern int	m3ter_reconcile_days;

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


extern void m3ter_define_settings(void);
extern void m3ter_settings_catch_up(void);
extern const char *m3ter_require_org_id(void);

extern bool m3ter_database_wanted(const char *name);

#endif							/* M3TER_GROUND_SETTINGS_H */
