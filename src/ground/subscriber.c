/*-------------------------------------------------------------------------
 *
 * subscriber.c
 *		Not delivering an outbox that another server delivers.
 *
 * In a blue/green upgrade (or any logical replication of m3ter.outbox) the
 * subscriber receives the publisher's rows and the publisher's status
 * updates.  The publisher delivers them; were the subscriber to deliver
 * too, every row would reach m3ter twice.  So while m3ter.outbox is a table
 * of an enabled subscription in this database, the worker delivers nothing
 * (its state says why) and m3ter_flush() refuses; once the subscription is
 * disabled or dropped (the cutover) delivery starts by itself, with the
 * statuses the publisher wrote.
 *
 * The check is one catalog query (pg_subscription_rel is small), run in the
 * caller's transaction with SPI, by the worker at each upkeep and by each
 * flush.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/spi.h"
#include "utils/builtins.h"

#include "ground/subscriber.h"

static const char subscription_sql[] =
"SELECT s.subname::pg_catalog.text FROM pg_catalog.pg_subscription_rel r "
"  JOIN pg_catalog.pg_subscription s ON s.oid = r.srsubid "
" WHERE r.srrelid = 'm3ter.outbox'::pg_catalog.regclass AND s.subenabled "
"   AND s.subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) "
" ORDER BY 1 LIMIT 1";

/*
 * The name of an enabled subscription in this database that m3ter.outbox
 * belongs to (palloc'd in the caller's context), or NULL.  Needs a
 * transaction; connects to SPI itself.
 */
char *
m3ter_outbox_subscription(void)
{
	MemoryContext caller = CurrentMemoryContext;
	char	   *name = NULL;

	SPI_connect();
	if (SPI_execute(subscription_sql, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "m3ter could not read pg_subscription_rel");
	if (SPI_processed > 0)
	{
		char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		name = MemoryContextStrdup(caller, v);
	}
	SPI_finish();
	return name;
}

/* Refuse to deliver an outbox that a subscription fills; what names the caller */
void
m3ter_require_not_subscribed(const char *what)
{
	char	   *name = m3ter_outbox_subscription();

	if (name != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s cannot deliver m3ter.outbox here: it is a table of subscription \"%s\"", what, name),
				 errdetail("The publisher delivers these rows; delivering them here too would send each twice."),
				 errhint("Deliver on the publisher. After the cutover (ALTER SUBSCRIPTION %s DISABLE, or DROP SUBSCRIPTION) this server delivers the rows still pending.",
						 quote_identifier(name))));
}
