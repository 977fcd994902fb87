/*-------------------------------------------------------------------------
 *
 * meter.c
 *		Config API functions: m3ter_create_meter(), m3ter_list_meters(),
 *		m3ter_organization_config().
 *
 * m3ter_create_meter() checks every rule of the Create Meter reference
 * before it calls m3ter: name 1-200 characters; code 1-80 characters
 * with no non-printable or whitespace characters but space and none at
 * either end; 1-15 dataFields and 0-15 derivedFields (an empty array,
 * never null), each with a known category, a code and a name, derived
 * ones with a calculation; customFields an object of strings and numbers.
 * The request body is built with cJSON, whose memory is malloc'd: it is
 * freed with cJSON_Delete on every path, errors included.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/tuplestore.h"
#include "utils/uuid.h"

#include "client/client.h"
#include "client/pacing.h"
#include "client/request.h"
#include "ground/json.h"
#include "ground/measurement.h"
#include "ground/settings.h"
#include "ground/version.h"

PG_FUNCTION_INFO_V1(m3ter_create_meter);
PG_FUNCTION_INFO_V1(m3ter_list_meters);
PG_FUNCTION_INFO_V1(m3ter_organization_config);

#define M3TER_MAX_FIELDS 15
#define M3TER_MAX_NAME_CHARS 200
#define M3TER_MAX_CODE_CHARS 80

static const char *const field_categories[] = {
	"WHO", "WHERE", "WHAT", "OTHER", "METADATA", "MEASURE", "INCOME", "COST", NULL
};

/* Raise a validation error about one argument or field of a meter */
static void
bad_meter(const char *where, const char *reason, const char *hint)
{
	ereport(ERROR,
			(errcode(reason == m3ter_not_utf8 ? ERRCODE_CHARACTER_NOT_IN_REPERTOIRE : ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid %s for m3ter_create_meter", where),
			 errdetail("%s", reason),
			 hint ? errhint("%s", hint) : 0));
}

/* Check a name: 1-200 characters */
static void
check_name(const char *where, const char *name)
{
	int			nchars = pg_mbstrlen(name);

	if (nchars < 1 || nchars > M3TER_MAX_NAME_CHARS)
		bad_meter(where, psprintf("It is %d characters long; m3ter takes 1 to %d.",
								  nchars, M3TER_MAX_NAME_CHARS), NULL);
}

/* Check a code: 1-80 characters, the whitespace rules */
static void
check_code(const char *where, const char *code)
{
	const char *why = m3ter_check_code(code, strlen(code), M3TER_MAX_CODE_CHARS);

	if (why != NULL)
		bad_meter(where, why, "Codes are short identifiers such as api_requests.");
}

/* A required string member of a field object */
static const char *
field_string(cJSON *field, const char *where, const char *member, bool required)
{
	cJSON	   *item = cJSON_GetObjectItemCaseSensitive(field, member);

	if (item == NULL || cJSON_IsNull(item))
	{
		if (required)
			bad_meter(psprintf("%s.%s", where, member), "It is required.", NULL);
		return NULL;
	}
	if (!cJSON_IsString(item))
		bad_meter(psprintf("%s.%s", where, member), "It must be a JSON string.", NULL);
	return item->valuestring;
}

/* Check a dataFields or derivedFields array; codes must be unique across both */
static void
check_fields(cJSON *fields, const char *arg, int min, int max, bool derived,
			 List **codes)
{
	cJSON	   *field;
	int			n;
	int			i = 0;

	if (fields == NULL || !cJSON_IsArray(fields))
		bad_meter(arg, "It must be a JSON array.",
				  derived ? "Pass '[]' for a meter without derived fields." : NULL);
	n = cJSON_GetArraySize(fields);
	if (n < min || n > max)
		bad_meter(arg, psprintf("It has %d items; m3ter takes %d to %d.", n, min, max), NULL);

	cJSON_ArrayForEach(field, fields)
	{
		char	   *where = psprintf("%s[%d]", arg, i++);
		const char *category;
		const char *code;
		cJSON	   *member;
		int			c;

		if (!cJSON_IsObject(field))
			bad_meter(where, "Each field must be a JSON object with category, code and name.", NULL);
		cJSON_ArrayForEach(member, field)
		{
			const char *k = member->string;

			/* (a SQL_ASCII database passes any bytes: not echoed in a message) */
			if (GetDatabaseEncoding() == PG_SQL_ASCII && !pg_verify_mbstr(PG_UTF8, k, strlen(k), true))
				bad_meter(psprintf("member name of %s", where), m3ter_not_utf8, NULL);
			if (strcmp(k, "category") != 0 && strcmp(k, "code") != 0 &&
				strcmp(k, "name") != 0 && strcmp(k, "unit") != 0 &&
				!(derived && strcmp(k, "calculation") == 0))
				bad_meter(psprintf("%s.%s", where, k), "m3ter fields have no such member.",
						  derived ? "Derived fields take category, code, name, calculation and unit." :
						  "Data fields take category, code, name and unit.");
		}

		category = field_string(field, where, "category", true);
		for (c = 0; field_categories[c] != NULL; c++)
			if (strcmp(category, field_categories[c]) == 0)
				break;
		if (field_categories[c] == NULL)
			bad_meter(psprintf("%s.category", where),
					  psprintf("\"%s\" is not a category.", category),
					  "Use one of WHO, WHERE, WHAT, OTHER, METADATA, MEASURE, INCOME, COST.");

		code = field_string(field, where, "code", true);
		check_code(psprintf("%s.code", where), code);
		{
			ListCell   *lc;

			foreach(lc, *codes)
				if (strcmp((char *) lfirst(lc), code) == 0)
					bad_meter(psprintf("%s.code", where),
							  psprintf("The code \"%s\" is used by another field of this meter.", code),
							  NULL);
			*codes = lappend(*codes, (char *) code);
		}
		check_name(psprintf("%s.name", where), field_string(field, where, "name", true));
		(void) field_string(field, where, "unit", false);
		if (derived)
		{
			const char *calc = field_string(field, where, "calculation", true);

			if (calc[0] == '\0')
				bad_meter(psprintf("%s.calculation", where), "It must not be empty.", NULL);
		}
	}
}

/* Check customFields: an object whose values are strings or finite numbers */
static void
check_custom_fields(cJSON *custom)
{
	cJSON	   *item;

	if (!cJSON_IsObject(custom))
		bad_meter("custom_fields", "It must be a JSON object.", NULL);
	cJSON_ArrayForEach(item, custom)
	{
		if (!cJSON_IsString(item) &&
			!(cJSON_IsNumber(item) && isfinite(item->valuedouble)))
			bad_meter(psprintf("custom_fields.%s", item->string),
					  "Custom field values must be strings or numbers.", NULL);
	}
}

/* A uuid argument as text, or NULL */
static char *
uuid_arg(FunctionCallInfo fcinfo, int argno)
{
	if (PG_ARGISNULL(argno))
		return NULL;
	return DatumGetCString(DirectFunctionCall1(uuid_out, PG_GETARG_DATUM(argno)));
}

/* Add a string member to a cJSON object, or raise when out of memory */
static void
add_string(cJSON *object, const char *name, const char *value)
{
	if (cJSON_AddStringToObject(object, name, value) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
}

/* Add an item to a cJSON object, or raise (the caller still owns it then) */
static void
add_item(cJSON *object, const char *name, cJSON *item)
{
	if (!cJSON_AddItemToObject(object, name, item))
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
}

/*
 * m3ter_create_meter(name text, code text, data_fields jsonb,
 *		derived_fields jsonb, product_id uuid, group_id uuid,
 *		custom_fields jsonb) RETURNS jsonb
 */
Datum
m3ter_create_meter(PG_FUNCTION_ARGS)
{
	cJSON	   *volatile body = NULL;
	cJSON	   *volatile data_fields = NULL;
	cJSON	   *volatile derived_fields = NULL;
	cJSON	   *volatile custom = NULL;
	cJSON	   *volatile answer = NULL;
	char	   *name;
	char	   *code;
	char	   *product_id;
	char	   *group_id;
	volatile Datum result = (Datum) 0;

	m3ter_require_installed_version();
	product_id = uuid_arg(fcinfo, 4);
	group_id = uuid_arg(fcinfo, 5);
	if (PG_ARGISNULL(0))
		bad_meter("name", "It is required.", NULL);
	if (PG_ARGISNULL(1))
		bad_meter("code", "It is required.", NULL);
	if (PG_ARGISNULL(2))
		bad_meter("data_fields", "It is required: a meter has 1 to 15 data fields.", NULL);
	if (PG_ARGISNULL(3))
		bad_meter("derived_fields", "It must not be null.", "Pass '[]' for a meter without derived fields.");

	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	code = text_to_cstring(PG_GETARG_TEXT_PP(1));
	check_name("name", name);
	check_code("code", code);

	PG_TRY();
	{
		List	   *codes = NIL;
		char	   *request;

		data_fields = m3ter_jsonb_to_cjson(PG_GETARG_JSONB_P(2), "data_fields");
		derived_fields = m3ter_jsonb_to_cjson(PG_GETARG_JSONB_P(3), "derived_fields");
		check_fields(data_fields, "data_fields", 1, M3TER_MAX_FIELDS, false, &codes);
		check_fields(derived_fields, "derived_fields", 0, M3TER_MAX_FIELDS, true, &codes);
		if (!PG_ARGISNULL(6))
		{
			custom = m3ter_jsonb_to_cjson(PG_GETARG_JSONB_P(6), "custom_fields");
			check_custom_fields(custom);
		}

		body = cJSON_CreateObject();
		if (body == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory")));
		add_string(body, "name", name);
		add_string(body, "code", code);
		add_item(body, "dataFields", data_fields);
		data_fields = NULL;
		add_item(body, "derivedFields", derived_fields);
		derived_fields = NULL;
		if (product_id)
			add_string(body, "productId", product_id);
		if (group_id)
			add_string(body, "groupId", group_id);
		if (custom != NULL)
		{
			add_item(body, "customFields", custom);
			custom = NULL;
		}

		request = m3ter_cjson_print_utf8(body, "the meter");
		answer = m3ter_call_answer(M3TER_CONFIG_API, "POST", m3ter_org_path("/meters"), request,
								   "creating an m3ter meter");
		result = m3ter_cjson_to_jsonb(answer);
	}
	PG_FINALLY();
	{
		cJSON_Delete(answer);
		cJSON_Delete(body);
		cJSON_Delete(custom);
		cJSON_Delete(derived_fields);
		cJSON_Delete(data_fields);
	}
	PG_END_TRY();
	PG_RETURN_DATUM(result);
}

/* Put one meter of a listing page into the result (arg: the ReturnSetInfo) */
static void
put_meter(const cJSON *meter, void *arg)
{
	ReturnSetInfo *rsinfo = arg;
	Datum		value = m3ter_cjson_to_jsonb(meter);
	bool		isnull = false;

	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &value, &isnull);
}

/* m3ter_list_meters() RETURNS SETOF jsonb: every meter, following nextToken */
Datum
m3ter_list_meters(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *next = NULL;
	List	   *seen = NIL;
	int			pages = 0;

	m3ter_require_installed_version();
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	do
	{
		char	   *path = next == NULL ? m3ter_org_path("/meters?pageSize=100") :
			m3ter_org_path(psprintf("/meters?pageSize=100&nextToken=%s", m3ter_url_encode(next)));

		next = m3ter_consume_page(m3ter_call_answer(M3TER_CONFIG_API, "GET", path, NULL, "listing m3ter meters"),
								  put_meter, rsinfo, &seen, ++pages, "listing m3ter meters");
	} while (next != NULL);

	return (Datum) 0;
}

/* m3ter_organization_config() RETURNS jsonb */
Datum
m3ter_organization_config(PG_FUNCTION_ARGS)
{
	m3ter_require_installed_version();
	PG_RETURN_DATUM(m3ter_call_jsonb(M3TER_CONFIG_API, "GET", m3ter_org_path("/organizationconfig"), NULL,
									 "reading the m3ter organization config"));
}
