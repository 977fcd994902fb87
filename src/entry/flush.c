/*-------------------------------------------------------------------------
 *
 * flush.c
 *		Draining the outbox on demand: CALL m3ter.flush() and
 *		m3ter_flush(), for pg_cron or a script where no worker runs.
 *
 * CALL m3ter.flush(max_rows) commits as it goes, like the worker: each
 * claim and each batch of answers is its own transaction, so a cancel or
 * an error re-sends at most what was in flight, and no transaction stays
 * open across more than one claim's requests.  Called inside a
 * transaction block (where it cannot commit) it works like m3ter_flush().
 * It runs each unit of work as the extension's owner with search_path set
 * to pg_catalog, pg_temp, as a SECURITY DEFINER function would (a
 * procedure that is SECURITY DEFINER may not commit), so the caller's
 * search_path cannot pick what its queries call.
 *
 * m3ter_flush(max_rows) is a function, so it works in the caller's
 * transaction: it holds the claim lock to the end, and everything it
 * delivered is only recorded when the caller commits.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "client/credentials.h"
#include "client/pacing.h"
#include "client/sender.h"
#include "ground/errors.h"
#include "ground/settings.h"
#include "ground/standby.h"
#include "ground/subscriber.h"
#include "ground/version.h"
#include "outbox/delivery.h"
#include "outbox/slots.h"

PG_FUNCTION_INFO_V1(m3ter_flush);
PG_FUNCTION_INFO_V1(m3ter_flush_procedure);

/* Warn once when m3ter refused the delivery */
static void
warn_if_stopped(const M3terFlushStats *stats)
{
	if (stats->stopped)
		ereport(WARNING,
				(errcode(stats->stop_sqlstate ? stats->stop_sqlstate : ERRCODE_M3TER_FORBIDDEN),
				 errmsg("m3ter refused the outbox delivery; sending stopped"),
				 errdetail("%s", stats->error ? stats->error : "no detail"),
				 errhint("Check m3ter.org_id, the credentials and m3ter.ingest_url. The rows stay pending.")));
}

/*
 * Say why a flush may have sent little: m3ter's 429s (or a Retry-After)
 * hold every send of the cluster for a while, and due rows wait for it;
 * or the token endpoint failed and the flush stopped at token_wait
 */
static void
notice_if_held(TimestampTz token_wait)
{
	bool		backing_off;
	TimestampTz until = m3ter_pace_held_until(M3TER_INGEST_API, &backing_off);
	const char *why = backing_off ? "m3ter keeps answering 429" : "m3ter asked to wait (Retry-After)";

	if (until == 0)
	{
		/* or the 5-minute budget: rows due now are left for it, unclaimed */
		until = m3ter_pace_budget_holds(M3TER_INGEST_API);
		why = "m3ter allows no more requests from this address yet (m3ter.max_requests_per_5min)";
	}
	if (until == 0 && token_wait > GetCurrentTimestamp())
		ereport(NOTICE,
				(errmsg("the m3ter token endpoint failed: the flush returns rather than wait %ld s to ask again",
						(long) ((token_wait - GetCurrentTimestamp() + USECS_PER_SEC - 1) / USECS_PER_SEC)),
				 m3ter_shared != NULL ?
				 errdetail("Rows due stay pending; the worker or the next flush sends them once it answers.") :
				 errdetail("Rows due stay pending. Without shared_preload_libraries the wait is this session's own: a flush in another session asks at once.")));
	else if (until != 0)
		ereport(NOTICE,
				(errmsg("%s: the cluster sends nothing for %ld s more", why,
						(long) ((until - GetCurrentTimestamp() + USECS_PER_SEC - 1) / USECS_PER_SEC)),
				 errdetail("Rows due meanwhile stay pending; the worker or the next flush sends them after the wait.")));
}

/* What a flush did, as jsonb */
static Datum
stats_jsonb(const M3terFlushStats *stats)
{
	StringInfoData out;

	initStringInfo(&out);
	appendStringInfo(&out,
					 "{\"accepted\":" INT64_FORMAT ",\"failed\":" INT64_FORMAT
					 ",\"retried\":" INT64_FORMAT ",\"requests\":" INT64_FORMAT
					 ",\"resent\":" INT64_FORMAT ",\"stopped\":%s,\"error\":",
					 stats->accepted, stats->failed, stats->retried, stats->requests,
					 stats->resent, stats->stopped ? "true" : "false");
	if (stats->error)
		escape_json(&out, stats->error);
	else
		appendStringInfoString(&out, "null");
	appendStringInfoChar(&out, '}');
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(out.data));
}

/* max_rows argument: NULL for all */
static int64
max_rows_arg(FunctionCallInfo fcinfo)
{
	if (PG_ARGISNULL(0))
		return 0;
	if (PG_GETARG_INT32(0) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_rows must not be negative")));
	return PG_GETARG_INT32(0) == 0 ? -1 : PG_GETARG_INT32(0);
}

/* Run a delivery to its end; the statistics are copied into *stats */
static void
run(M3terTxnMode mode, int64 max_rows, M3terFlushStats *stats)
{
	M3terDelivery d;
	TimestampTz token_wait;

	m3ter_require_installed_version();
	m3ter_require_primary(mode == M3TER_TXN_CALLER ? "m3ter_flush()" : "m3ter.flush()");
	m3ter_require_not_subscribed(mode == M3TER_TXN_CALLER ? "m3ter_flush()" : "m3ter.flush()");
	(void) m3ter_require_org_id();
	m3ter_require_credentials();

	if (max_rows < 0)
	{
		memset(stats, 0, sizeof(*stats));
		return;
	}
	m3ter_delivery_start(&d, mode, max_rows);
	/* in the caller's transaction, holding the claim lock: give up on the token as a call does */
	if (mode == M3TER_TXN_CALLER)
		d.sender.max_token_failures = m3ter_max_retries;
	PG_TRY();
	{
		while (m3ter_delivery_step(&d, 100))
		{
			CHECK_FOR_INTERRUPTS();
			if (d.claim_lock_busy && m3ter_sender_busy(&d.sender) == 0)
				m3ter_sleep_ms(50);
		}
	}
	PG_CATCH();
	{
		m3ter_delivery_end(&d);
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (d.sender.stopped && d.sender.stop.outcome == M3TER_TRANSIENT)
	{
		/* the token endpoint failed m3ter.max_retries times more: nothing was sent */
		M3terCallResult why = d.sender.stop;

		m3ter_delivery_end(&d);
		m3ter_raise_call_error(&why, "m3ter_flush()");
	}
	*stats = d.stats;
	if (stats->error != NULL)
		stats->error = pstrdup(stats->error);
	token_wait = m3ter_sender_token_wait(&d.sender);	/* the procedure stopped at it (0: none) */
	m3ter_delivery_end(&d);
	m3ter_note_delivery(stats);
	warn_if_stopped(stats);
	notice_if_held(token_wait);
}

/*
 * m3ter_flush(max_rows int DEFAULT NULL) RETURNS jsonb
 *
 * Delivers the due rows (all of them, or max_rows) in the caller's
 * transaction and returns what happened.
 */
Datum
m3ter_flush(PG_FUNCTION_ARGS)
{
	int64		max_rows = max_rows_arg(fcinfo);
	M3terFlushStats stats;
	MemoryContext caller = CurrentMemoryContext;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	run(M3TER_TXN_CALLER, max_rows, &stats);
	MemoryContextSwitchTo(caller);
	{
		Datum		result = stats_jsonb(&stats);

		SPI_finish();
		PG_RETURN_DATUM(result);
	}
}

/* The owner of the extension, whose rights a flush runs with */
static Oid
extension_owner(void)
{
	Oid			ext = get_extension_oid("m3ter", false);
	HeapTuple	tup = SearchSysCache1(EXTENSIONOID, ObjectIdGetDatum(ext));
	Oid			owner;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for extension %u", ext);
	owner = ((Form_pg_extension) GETSTRUCT(tup))->extowner;
	ReleaseSysCache(tup);
	return owner;
}

/*
 * m3ter.flush(max_rows int DEFAULT NULL, INOUT result jsonb DEFAULT NULL)
 *
 * The procedure: commits after each unit of work (see the file header).
 */
Datum
m3ter_flush_procedure(PG_FUNCTION_ARGS)
{
	int64		max_rows = max_rows_arg(fcinfo);
	bool		atomic = !(fcinfo->context && IsA(fcinfo->context, CallContext) &&
						   !castNode(CallContext, fcinfo->context)->atomic);
	M3terFlushStats stats;
	MemoryContext caller = CurrentMemoryContext;
	Oid			saved_user;
	int			saved_sec;
	Oid			owner = extension_owner();

	if (SPI_connect_ext(atomic ? 0 : SPI_OPT_NONATOMIC) != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	GetUserIdAndSecContext(&saved_user, &saved_sec);
	SetUserIdAndSecContext(owner, saved_sec | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		if (atomic)
		{
			/* as a SECURITY DEFINER function would: a safe search_path to the end (and no jit) */
			int			nest = NewGUCNestLevel();

			(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
									 GUC_ACTION_SAVE, true, 0, false);
			(void) set_config_option("jit", "off", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
			run(M3TER_TXN_CALLER, max_rows, &stats);
			AtEOXact_GUC(true, nest);
		}
		else
			run(M3TER_TXN_PROCEDURE, max_rows, &stats);	/* sets it per transaction */
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(saved_user, saved_sec);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(caller);
	{
		/* a procedure with an output parameter returns a record */
		TupleDesc	tupdesc;
		Datum		values[1];
		bool		nulls[1] = {false};

		if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "return type must be a row type");
		values[0] = stats_jsonb(&stats);
		SPI_finish();
		PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
	}
}
