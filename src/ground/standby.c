/*-------------------------------------------------------------------------
 *
 * standby.c
 *		Refusing, clearly, to write on a standby.
 *
 * A hot standby can read m3ter.outbox and call m3ter (m3ter_submit(),
 * m3ter_worker_status(), m3ter.outbox_stats keep working), but cannot write
 * a row's status.  Functions that would write call m3ter_require_primary()
 * before they touch anything, so the caller gets one error with its own
 * SQLSTATE (M3R01), naming the standby and pointing at the primary, instead
 * of PostgreSQL's generic read-only-transaction error from deep inside.
 * SQL-language functions do the same through m3ter.require_primary().
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "fmgr.h"
#include "utils/builtins.h"

#include "ground/standby.h"
#include "ground/errors.h"

PG_FUNCTION_INFO_V1(m3ter_require_primary_sql);

/* Raise ERRCODE_M3TER_STANDBY if this server is in recovery; what names the caller */
void
m3ter_require_primary(const char *what)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_M3TER_STANDBY),
				 errmsg("%s cannot run on a standby server", what),
				 errdetail("This server is in recovery: m3ter.outbox is read-only here, and the primary delivers it."),
				 errhint("Run %s on the primary. On a standby, m3ter_worker_status(), m3ter.outbox_stats and m3ter_submit() work.",
						 what)));
}

/* m3ter.require_primary(what text) RETURNS void: the SQL face of m3ter_require_primary() */
Datum
m3ter_require_primary_sql(PG_FUNCTION_ARGS)
{
	m3ter_require_primary(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}
