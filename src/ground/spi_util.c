/*-------------------------------------------------------------------------
 *
 * spi_util.c
 *		Small helpers for the files that query through SPI.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"

#include "ground/spi_util.h"

/* Prepare and keep a plan once per process, with the cursor options given */
static SPIPlanPtr
keep_plan(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes, int cursor_options)
{
	if (*slot == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, argtypes, cursor_options);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for m3ter query: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		*slot = plan;
	}
	return *slot;
}

/* Prepare and keep a plan once per process */
SPIPlanPtr
m3ter_keep_plan(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes)
{
	return keep_plan(slot, sql, nargs, argtypes, 0);
}

/*
 * Run a write of rows by primary key (WHERE id = ANY($1)) through a plan
 * kept once per process and planned once for any arguments, so that each run
 * skips the planner.  The planner sizes the table as it is when it plans:
 * after CREATE EXTENSION or a TRUNCATE that is a page or two, where a
 * sequential scan testing each row against every id looks cheapest, and the
 * kept plan went on scanning as the table grew, until the next ANALYZE (a
 * write of 1,000 rows read 25,000).  Sequential scans are off while it runs,
 * so whenever the plan cache plans it, it goes by the key.
 */
int
m3ter_execute_by_key(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes,
					 Datum *values, const char *nulls)
{
	SPIPlanPtr	plan = keep_plan(slot, sql, nargs, argtypes, CURSOR_OPT_GENERIC_PLAN);
	int			nest = NewGUCNestLevel();
	int			rc;

	(void) set_config_option("enable_seqscan", "off", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
							 true, 0, false);
	rc = SPI_execute_plan(plan, values, nulls, false, 0);
	AtEOXact_GUC(true, nest);
	return rc;
}

/* An int8[] of n values (ids, gap bounds, virtual transaction ids) */
Datum
m3ter_int8_array(const int64 *ids, int n)
{
	Datum	   *elems = palloc(Max(n, 1) * sizeof(Datum));
	int			i;

	for (i = 0; i < n; i++)
		elems[i] = Int64GetDatum(ids[i]);
	return PointerGetDatum(construct_array(elems, n, INT8OID, sizeof(int64),
										   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

