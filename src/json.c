/*-------------------------------------------------------------------------
 *
 * json.c
 *		cJSON glue: memory hooks and small helpers for m3ter's answers.
 *
 * cJSON is told to allocate with palloc/pfree, so everything it builds
 * lives in the current memory context and is released with it, on error
 * paths too.  cJSON then never calls realloc (it only does so when its
 * hooks are the C library's malloc and free).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <cjson/cJSON.h>

#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "m3ter.h"
#include "m3ter_json.h"

/* palloc for cJSON */
static void *
cjson_alloc(size_t size)
{
	return palloc(size);
}

/* pfree for cJSON, which also frees NULL */
static void
cjson_free(void *ptr)
{
	if (ptr != NULL)
		pfree(ptr);
}

/* Route cJSON's allocations through palloc; called once from _PG_init */
void
m3ter_json_install(void)
{
	cJSON_Hooks hooks = {cjson_alloc, cjson_free};

	cJSON_InitHooks(&hooks);
}

/*
 * The message to show for an answer: its JSON "message" field, else its
 * text (cut to 500 bytes), else NULL for an empty body.
 */
char *
m3ter_answer_message(const char *body)
{
	cJSON	   *root;
	char	   *msg = NULL;

	if (body == NULL || body[0] == '\0')
		return NULL;
	root = cJSON_Parse(body);
	if (root != NULL)
	{
		cJSON	   *m = cJSON_GetObjectItemCaseSensitive(root, "message");

		if (cJSON_IsString(m) && m->valuestring != NULL)
			msg = pstrdup(m->valuestring);
		cJSON_Delete(root);
	}
	if (msg == NULL)
		msg = pnstrdup(body, 500);
	return msg;
}

/* Parse JSON text that a caller has already checked, or raise */
cJSON *
m3ter_parse_answer(const char *body, const char *what)
{
	cJSON	   *root = cJSON_Parse(body);

	if (root == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_M3TER_SERVER),
				 errmsg("m3ter answered %s with a body that is not JSON", what),
				 errdetail("The body starts with: %s", pnstrdup(body, 200))));
	return root;
}

/* A cJSON value as jsonb */
Datum
m3ter_cjson_to_jsonb(const cJSON *item)
{
	char	   *text = cJSON_PrintUnformatted(item);
	Datum		result;

	if (text == NULL)
		elog(ERROR, "could not print a JSON value");
	result = DirectFunctionCall1(jsonb_in, CStringGetDatum(text));
	pfree(text);
	return result;
}

/*
 * A jsonb argument as a cJSON tree (NULL for SQL NULL input); what names the
 * argument in errors.  cJSON refuses nesting deeper than CJSON_NESTING_LIMIT
 * (1000 levels), which jsonb allows.
 */
cJSON *
m3ter_jsonb_to_cjson(Jsonb *jb, const char *what)
{
	char	   *text;
	cJSON	   *root;

	if (jb == NULL)
		return NULL;
	text = JsonbToCString(NULL, &jb->root, VARSIZE(jb));
	root = cJSON_Parse(text);
	if (root == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s is nested too deeply", what),
				 errdetail("JSON values may be nested at most %d levels deep here.", CJSON_NESTING_LIMIT)));
	pfree(text);
	return root;
}
