/*-------------------------------------------------------------------------
 *
 * usage.c
 *		m3ter's usage query (the Data Explorer), for reconciliation.
 *
 * m3ter.usage_query(body) sends one query as it is given and returns m3ter's
 * answer; m3ter_reconcile() (SQL, in the extension's script) builds the
 * queries, splits them so that no answer is cut, reads the answers and
 * compares them with the outbox.  The call is paced at the Data Explorer's
 * one request a second for the whole cluster (pacing.c), and retried after
 * 429, 5xx and network faults as the other Config API calls are; a failure
 * raises its SQLSTATE of class M3.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <cjson/cJSON.h>

#include "fmgr.h"
#include "utils/jsonb.h"

#include "client/client.h"
#include "client/pacing.h"
#include "client/request.h"
#include "ground/json.h"
#include "ground/version.h"

PG_FUNCTION_INFO_V1(m3ter_usage_query);

/* The request body as UTF-8 JSON text */
static char *
request_text(Jsonb *request)
{
	cJSON	   *body = m3ter_jsonb_to_cjson(request, "the usage query");
	char	   *volatile text = NULL;

	PG_TRY();
	{
		text = m3ter_cjson_print_utf8(body, "the usage query");
	}
	PG_FINALLY();
	{
		cJSON_Delete(body);
	}
	PG_END_TRY();
	return text;
}

/* m3ter.usage_query(body jsonb) RETURNS jsonb */
Datum
m3ter_usage_query(PG_FUNCTION_ARGS)
{
	char	   *text;

	m3ter_require_installed_version();
	text = request_text(PG_GETARG_JSONB_P(0));
	PG_RETURN_DATUM(m3ter_call_jsonb(M3TER_EXPLORER_API, "POST", m3ter_org_path("/usage/query"), text,
									 "querying m3ter's usage"));
}
