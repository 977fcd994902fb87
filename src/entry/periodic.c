/*-------------------------------------------------------------------------
 *
 * periodic.c
 *		The worker's periodic tasks: the event poll, the catalog sync and
 *		the scheduled reconciliation, each when its interval has passed.
 *
 * Each runs in a subtransaction of the worker's pass: a failure is logged
 * and rolled back without touching the drain of the same pass.  While
 * rows wait to be sent, a task waits one interval more: its requests to
 * m3ter would delay the rows' and spend the same limits.  While the token
 * endpoint's wait holds, none runs (each would ask it again).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "access/xact.h"
#include "executor/spi.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "client/token.h"
#include "entry/periodic.h"
#include "outbox/catalog.h"
#include "outbox/events.h"
#include "ground/settings.h"
#include "ground/spi_util.h"

/* how often the codes of held rows' accounts are looked up, at most */
#define HELD_LOOKUP_S 30

typedef enum PeriodicTask
{
	TASK_EVENT_POLL,
	TASK_CATALOG_SYNC,
	TASK_ACCOUNT_LOOKUP,
	TASK_RECONCILE
} PeriodicTask;

/*
 * Reconcile the days between m3ter.reconcile_days and m3ter.reconcile_lag
 * ago; m3ter.reconcile_scheduled() keeps a failed run with its error
 */
static void
reconcile_scheduled(void)
{
	char	   *sql = psprintf("SELECT m3ter.reconcile_scheduled(%d, %d)",
							   m3ter_reconcile_lag_s, m3ter_reconcile_days);

	if (SPI_execute(sql, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "m3ter scheduled reconciliation failed");
}

/* Run a periodic task in a subtransaction; log and swallow errors */
static void
run_guarded(PeriodicTask task, const char *what)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		if (task == TASK_EVENT_POLL)
			m3ter_events_poll_logged();
		else if (task == TASK_CATALOG_SYNC)
			m3ter_catalog_sync(m3ter_unknown_accounts != M3TER_ACCOUNTS_SEND, 0, NULL);
		else if (task == TASK_ACCOUNT_LOOKUP)
			m3ter_catalog_lookup_unknown(0);
		else
			reconcile_scheduled();
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		ereport(LOG,
				(errmsg("m3ter %s failed: %s", what, edata->message),
				 edata->detail ? errdetail("%s", edata->detail) : 0));
		if (task == TASK_CATALOG_SYNC || task == TASK_ACCOUNT_LOOKUP)
			m3ter_catalog_note_error(edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();
}

/*
 * Has a periodic task of interval_s fallen due since *last (0: never run,
 * due at once)?  With rows waiting to be sent it waits one interval more.
 */
static bool
interval_due(TimestampTz *last, int interval_s, bool rows_due, TimestampTz first_call)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz since = *last != 0 ? *last : first_call - (int64) interval_s * USECS_PER_SEC;

	if (interval_s <= 0 ||
		!TimestampDifferenceExceeds(since, now, (int) Min((int64) interval_s * 1000 * (rows_due ? 2 : 1),
														  (int64) INT_MAX)))
		return false;
	*last = now;
	return true;
}

/*
 * Called by the worker once per pass, in a transaction with SPI connected:
 * poll the Events API, refresh the catalog and reconcile when their
 * intervals passed.  Returns true when the poll or the sync ran (rows may
 * have changed).
 */
bool
m3ter_periodic_tasks_if_due(bool rows_due)
{
	static TimestampTz first_call = 0;
	static TimestampTz last_poll = 0;
	static TimestampTz last_sync = 0;
	static TimestampTz last_reconcile = 0;
	static TimestampTz last_lookup = 0;
	static uint64 held_at_lookup = 0;

	bool		ran = false;

	if (first_call == 0)
		first_call = GetCurrentTimestamp();
	/* each asks for a bearer token: none while the token endpoint's wait holds */
	if (m3ter_token_wait(0, true) != 0)
		return false;
	if (interval_due(&last_poll, m3ter_events_poll_interval_s, rows_due, first_call))
	{
		run_guarded(TASK_EVENT_POLL, "event poll");
		ran = true;
	}
	/* the checks of the rows about to be claimed want the catalog first */
	if (m3ter_catalog_checks &&
		interval_due(&last_sync, m3ter_catalog_refresh_interval_s, false, first_call))
	{
		run_guarded(TASK_CATALOG_SYNC, "catalog sync");
		ran = true;
	}
	/*
	 * rows held for an account the catalog does not know (created in m3ter
	 * since the last refresh, say): their codes are looked up within
	 * HELD_LOOKUP_S, not at the next refresh
	 */
	if (m3ter_catalog_checks && m3ter_unknown_accounts == M3TER_ACCOUNTS_HOLD &&
		m3ter_catalog_rows_held() != held_at_lookup &&
		interval_due(&last_lookup, HELD_LOOKUP_S, false, first_call))
	{
		held_at_lookup = m3ter_catalog_rows_held();
		run_guarded(TASK_ACCOUNT_LOOKUP, "account lookup");
		ran = true;
	}
	/* delivery waits while it runs: one usage query a second */
	if (interval_due(&last_reconcile, m3ter_reconcile_interval_s, rows_due, first_call))
		run_guarded(TASK_RECONCILE, "reconciliation");
	return ran;
}
