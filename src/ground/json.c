/*-------------------------------------------------------------------------
 *
 * json.c
 *		cJSON glue and text conversion at the edge between m3ter and the
 *		database.
 *
 * cJSON allocates with the C library's malloc: the extension installs no
 * process-wide hooks, so other code in the same process that uses cJSON is
 * not affected.  Every tree (and every string cJSON prints) is therefore
 * freed explicitly, with PG_TRY/PG_FINALLY wherever code that can raise runs
 * while one is alive.  Functions here that return a cJSON tree hand its
 * ownership to the caller.
 *
 * m3ter speaks UTF-8; the database may use another encoding.  Text crosses
 * between them only here and in measurement.c:
 *	- m3ter_server_to_utf8(): database text going out.  Every server
 *	  encoding but SQL_ASCII converts to UTF-8 without loss.  A SQL_ASCII
 *	  database declares no encoding, so its text is taken to be UTF-8 and
 *	  refused when it is not.
 *	- m3ter_utf8_to_server(): text coming back (m3ter's messages, meters,
 *	  enrichment events and failed-ingest logs; parsed answers are
 *	  converted key by key and string by string, m3ter_parse_answer() and
 *	  m3ter_parse_utf8()).
 *	  A character the database encoding cannot hold is written as the six
 *	  characters \uXXXX (\UXXXXXXXX beyond the BMP); bytes that are not
 *	  UTF-8 become '?'.  A SQL_ASCII database gets the UTF-8 as it is
 *	  (its invalid bytes as '?' too), clipped on UTF-8 character boundaries.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include <cjson/cJSON.h>

#include "catalog/namespace.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "ground/json.h"
#include "ground/errors.h"

/* Longest message kept from an answer, in bytes of the database encoding */
#define M3TER_MESSAGE_MAX_BYTES 500

/* Source bytes converted per call of the conversion routine */
#define CONVERT_CHUNK 4096

/* Does s (len bytes) hold any byte outside ASCII? */
static bool
has_high_bit(const char *s, int len)
{
	int			i;

	for (i = 0; i < len; i++)
		if (IS_HIGHBIT_SET(s[i]))
			return true;
	return false;
}

/* Append the stand-in text for the character (or invalid byte) at p */
static void
append_unconvertible(StringInfo out, const unsigned char *p, int avail,
					 int *used)
{
	int			l = pg_utf_mblen(p);

	if (l <= avail && pg_utf8_islegal(p, l))
	{
		pg_wchar	c = utf8_to_unicode(p);

		if (c > 0xFFFF)
			appendStringInfo(out, "\\U%08X", c);
		else
			appendStringInfo(out, "\\u%04X", c);
		*used = l;
	}
	else
	{
		appendStringInfoChar(out, '?');
		*used = 1;
	}
}

/*
 * UTF-8 text from m3ter (len bytes) in the database encoding, palloc'd and
 * NUL-terminated.  Needs a transaction when the database encoding is neither
 * UTF8 nor SQL_ASCII.
 */
static char *
m3ter_utf8_to_server(const char *s, int len)
{
	int			enc = GetDatabaseEncoding();
	const unsigned char *p = (const unsigned char *) s;
	const unsigned char *end = p + len;
	StringInfoData out;
	Oid			proc = InvalidOid;
	unsigned char *buf = NULL;

	if (!has_high_bit(s, len))
		return pnstrdup(s, len);

	initStringInfo(&out);
	if (enc != PG_UTF8 && enc != PG_SQL_ASCII)
	{
		proc = FindDefaultConversionProc(PG_UTF8, enc);
		if (!OidIsValid(proc))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_FUNCTION),
					 errmsg("default conversion function for encoding \"%s\" to \"%s\" does not exist",
							pg_encoding_to_char(PG_UTF8), pg_encoding_to_char(enc))));
		buf = palloc(CONVERT_CHUNK * MAX_CONVERSION_GROWTH + 1);
	}
	while (p < end)
	{
		int			used;

		if (!IS_HIGHBIT_SET(*p))
		{
			const unsigned char *run = p;

			while (p < end && !IS_HIGHBIT_SET(*p))
				p++;
			appendBinaryStringInfo(&out, (const char *) run, p - run);
			continue;
		}
		if (enc == PG_UTF8 || enc == PG_SQL_ASCII)
		{
			int			l = pg_utf_mblen(p);

			if (l <= end - p && pg_utf8_islegal(p, l))
			{
				appendBinaryStringInfo(&out, (const char *) p, l);
				p += l;
				continue;
			}
			appendStringInfoChar(&out, '?');
			p++;
			continue;
		}
		else
		{
			int			chunk = Min(end - p, CONVERT_CHUNK);
			const unsigned char *chunk_end = p + chunk;
			int			done;

			done = pg_do_encoding_conversion_buf(proc, PG_UTF8, enc,
												 unconstify(unsigned char *, p), chunk,
												 buf, CONVERT_CHUNK * MAX_CONVERSION_GROWTH + 1,
												 true);
			appendStringInfoString(&out, (const char *) buf);
			p += done;
			if (p >= chunk_end)
				continue;
			/* a character cut by the chunk's end: convert it with the next */
			if (chunk_end < end && p + pg_utf_mblen(p) > chunk_end)
				continue;
		}
		append_unconvertible(&out, p, end - p, &used);
		p += used;
	}
	if (buf != NULL)
		pfree(buf);
	return out.data;
}

/*
 * Database text (len bytes) as UTF-8 for m3ter, palloc'd (or s itself when
 * it needs no change).  what names the text in the error raised when a
 * SQL_ASCII database holds bytes that are not UTF-8.
 */
char *
m3ter_server_to_utf8(const char *s, int len, const char *what)
{
	int			enc = GetDatabaseEncoding();

	if (enc == PG_UTF8 || !has_high_bit(s, len))
		return unconstify(char *, s);
	if (enc == PG_SQL_ASCII)
	{
		if (!pg_verify_mbstr(PG_UTF8, s, len, true))
			ereport(ERROR,
					(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
					 errmsg("%s is not valid UTF-8", what),
					 errdetail("This database's encoding is SQL_ASCII, so m3ter takes its text to be UTF-8, which is what m3ter reads."),
					 errhint("Write UTF-8 text, or use a database whose encoding is not SQL_ASCII.")));
		return unconstify(char *, s);
	}
	return pg_server_to_any(s, len, PG_UTF8);
}

/*
 * How many bytes of s to keep for at most limit bytes on a character
 * boundary: of the database encoding, or of UTF-8 in a SQL_ASCII database,
 * whose text from m3ter is kept as UTF-8.
 */
static int
clip_length(const char *s, int limit)
{
	int			len = strlen(s);

	if (GetDatabaseEncoding() == PG_SQL_ASCII)
		return pg_encoding_mbcliplen(PG_UTF8, s, len, limit);
	return pg_mbcliplen(s, len, limit);
}

/* The message of a parsed answer (root may be NULL), converted, unclipped */
static char *
message_text(const cJSON *root, const char *body)
{
	const cJSON *m = root ? cJSON_GetObjectItemCaseSensitive(root, "message") : NULL;
	const char *raw = body;

	if (cJSON_IsString(m) && m->valuestring != NULL)
		raw = m->valuestring;
	/* no more than 4 bytes of UTF-8 per character kept are needed */
	return m3ter_utf8_to_server(raw, strnlen(raw, M3TER_MESSAGE_MAX_BYTES * 4));
}

/*
 * The message to show for an answer: its JSON "message" field, else its
 * text; in the database encoding, clipped to 500 bytes on a character
 * boundary, ready to store, without surrounding blanks.  NULL when that
 * leaves nothing.
 */
char *
m3ter_answer_message(const char *body)
{
	/* a body of only blanks says as little as an empty one */
	const char *text = body == NULL ? "" : body + strspn(body, " \t\r\n");
	cJSON	   *volatile root;
	char	   *volatile msg = NULL;
	int			len;

	if (text[0] == '\0')
		return NULL;
	root = cJSON_Parse(text);
	PG_TRY();
	{
		msg = message_text(root, text);
	}
	PG_FINALLY();
	{
		cJSON_Delete(root);
	}
	PG_END_TRY();
	msg[clip_length(msg, M3TER_MESSAGE_MAX_BYTES)] = '\0';
	len = strlen(msg);
	while (len > 0 && strchr(" \t\r\n", msg[len - 1]) != NULL)
		msg[--len] = '\0';
	if (len == 0)
	{
		pfree(msg);
		return NULL;
	}
	return msg;
}

/* A malloc'd copy of UTF-8 text s in the database encoding, for a cJSON node */
static char *
node_text(const char *s)
{
	char	   *conv = m3ter_utf8_to_server(s, strlen(s));
	size_t		len = strlen(conv) + 1;
	char	   *copy = cJSON_malloc(len);

	if (copy == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	memcpy(copy, conv, len);
	pfree(conv);
	return copy;
}

/*
 * Convert every key and string of a tree parsed from m3ter's UTF-8 into the
 * database encoding, in place.  cJSON decodes \uXXXX escapes to UTF-8, so
 * this is done on the tree, not on the text.  Raises with the tree intact.
 */
static void
convert_tree(cJSON *node)
{
	for (; node != NULL; node = node->next)
	{
		if (node->string != NULL && !(node->type & cJSON_StringIsConst) &&
			has_high_bit(node->string, strlen(node->string)))
		{
			char	   *copy = node_text(node->string);

			cJSON_free(node->string);
			node->string = copy;
		}
		if (cJSON_IsString(node) && node->valuestring != NULL &&
			has_high_bit(node->valuestring, strlen(node->valuestring)))
		{
			char	   *copy = node_text(node->valuestring);

			cJSON_free(node->valuestring);
			node->valuestring = copy;
		}
		if (node->child != NULL)
			convert_tree(node->child);
	}
}

/* convert_tree(), deleting the tree if it raises */
static void
convert_tree_or_free(cJSON *root)
{
	PG_TRY();
	{
		convert_tree(root);
	}
	PG_CATCH();
	{
		cJSON_Delete(root);
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/*
 * cJSON ends a string at an escaped NUL (\u0000), and the rest of a message
 * is lost: such escapes become U+FFFD (\ufffd, as long) in a palloc'd copy.
 * Returns text itself when it holds none.
 */
const char *
m3ter_without_nul_escapes(const char *text)
{
	char	   *copy;
	char	   *p;

	if (strstr(text, "\\u0000") == NULL)
		return text;
	copy = pstrdup(text);
	for (p = copy; (p = strstr(p, "\\u0000")) != NULL; p += 6)
	{
		const char *q = p;
		int			backslashes = 0;

		while (q > copy && q[-1] == '\\')
		{
			backslashes++;
			q--;
		}
		if (backslashes % 2 == 0)	/* not itself an escaped backslash */
			memcpy(p, "\\ufffd", 6);
	}
	return copy;
}

/*
 * Parse an answer of m3ter (UTF-8 JSON) into a cJSON tree whose keys and
 * strings are in the database encoding, or raise.  The caller owns the tree
 * and frees it with cJSON_Delete().
 */
cJSON *
m3ter_parse_answer(const char *body, const char *what)
{
	const char *text = m3ter_without_nul_escapes(body);
	cJSON	   *root = cJSON_Parse(text);

	if (text != body)
		pfree((char *) text);

	if (root == NULL)
	{
		char	   *start = m3ter_utf8_to_server(body, strnlen(body, 200));

		start[clip_length(start, 200)] = '\0';
		ereport(ERROR,
				(errcode(ERRCODE_M3TER_SERVER),
				 errmsg("m3ter answered %s with a body that is not JSON", what),
				 errdetail("The body starts with: %s", start)));
	}
	convert_tree_or_free(root);
	return root;
}

/*
 * Parse one JSON value of m3ter's UTF-8 text (a failed-ingest log holds
 * several, one after another) into a tree whose keys and strings are in the
 * database encoding, as m3ter_parse_answer() does; NULL when text does not
 * start with one.  With end, *end is set after the value.  The caller owns
 * the tree (and passes the text through m3ter_without_nul_escapes() first,
 * once).
 */
cJSON *
m3ter_parse_utf8(const char *text, const char **end)
{
	cJSON	   *root = cJSON_ParseWithOpts(text, end, false);

	if (root != NULL)
		convert_tree_or_free(root);
	return root;
}

/*
 * Parse JSON text held in the database encoding (a string of a converted
 * tree that holds serialized JSON): back to UTF-8 first, since its \uXXXX
 * escapes decode to UTF-8, then as m3ter_parse_utf8().  NULL when it is not
 * JSON.
 */
cJSON *
m3ter_parse_embedded(const char *text, const char *what)
{
	char	   *utf8 = m3ter_server_to_utf8(text, strlen(text), what);
	const char *clean = m3ter_without_nul_escapes(utf8);
	cJSON	   *root = m3ter_parse_utf8(clean, NULL);

	if (clean != utf8)
		pfree((char *) clean);
	if (utf8 != text)
		pfree(utf8);
	return root;
}

/* a listing longer than this many pages of 200 (100,000 meters or accounts) does not end */
#define M3TER_MAX_LIST_PAGES 500

/*
 * The nextToken of a page of a listing (palloc'd), or NULL on its last page.
 * *seen holds the tokens this listing followed so far (the new one is
 * added) and pages counts its pages.  m3ter's pages do not promise that a
 * listing ends: a token that names a page already listed, or more than
 * M3TER_MAX_LIST_PAGES pages, raises instead of listing forever.
 */
static char *
next_page_token(const cJSON *page, List **seen, int pages, const char *what)
{
	const cJSON *token = cJSON_GetObjectItemCaseSensitive(page, "nextToken");
	bool		listed = false;
	ListCell   *lc;
	char	   *next;

	if (!cJSON_IsString(token) || token->valuestring[0] == '\0')
		return NULL;
	foreach(lc, *seen)
		listed = listed || strcmp((const char *) lfirst(lc), token->valuestring) == 0;
	if (listed || pages >= M3TER_MAX_LIST_PAGES)
		ereport(ERROR,
				(errcode(ERRCODE_M3TER_UNEXPECTED),
				 errmsg("m3ter answered %s with a listing that does not end", what),
				 listed ? errdetail("Page %d names a page already listed as the next one.", pages) :
				 errdetail("It still had a next page after %d pages.", pages),
				 errhint("Check that m3ter.api_url points at m3ter's API.")));
	next = pstrdup(token->valuestring);
	*seen = lappend(*seen, next);
	return next;
}

/*
 * Hand each item of a listing page's "data" to take(item, arg), then free
 * the page, whatever happens; returns the page's nextToken (as
 * next_page_token() does) or NULL on the last page
 */
char *
m3ter_consume_page(cJSON *page, void (*take) (const cJSON *item, void *arg), void *arg,
				   List **seen, int pages, const char *what)
{
	char	   *next = NULL;

	PG_TRY();
	{
		const cJSON *item;
		const cJSON *data = cJSON_GetObjectItemCaseSensitive(page, "data");

		/* no list at all ({}, [], null: a proxy's answer) is not an empty one */
		if (!cJSON_IsArray(data))
		{
			char	   *printed = cJSON_PrintUnformatted(page);
			char	   *start = pnstrdup(printed ? printed : "?", 200);

			if (printed != NULL)
				cJSON_free(printed);
			ereport(ERROR,
					(errcode(ERRCODE_M3TER_UNEXPECTED),
					 errmsg("m3ter answered %s with a page that has no \"data\" list", what),
					 errdetail("The page starts with: %s", start)));
		}
		cJSON_ArrayForEach(item, data)
		{
			if (!cJSON_IsObject(item))
				ereport(ERROR,
						(errcode(ERRCODE_M3TER_UNEXPECTED),
						 errmsg("m3ter answered %s with a page whose \"data\" holds something other than objects",
								what)));
			take(item, arg);
		}
		next = next_page_token(page, seen, pages, what);
	}
	PG_CATCH();
	{
		cJSON_Delete(page);
		PG_RE_THROW();
	}
	PG_END_TRY();
	cJSON_Delete(page);
	return next;
}

/* Does a tree hold a number that is not finite? */
static bool
has_infinite_number(const cJSON *item)
{
	const cJSON *child;

	if (cJSON_IsNumber(item))
		return isinf(item->valuedouble) || isnan(item->valuedouble);
	cJSON_ArrayForEach(child, item)
	{
		if (has_infinite_number(child))
			return true;
	}
	return false;
}

/* A cJSON value (strings in the database encoding) as jsonb */
Datum
m3ter_cjson_to_jsonb(const cJSON *item)
{
	char	   *volatile text;
	volatile Datum result = (Datum) 0;

	/* cJSON reads a number beyond a double's range as infinite and prints it as null */
	if (has_infinite_number(item))
		ereport(ERROR,
				(errcode(ERRCODE_M3TER_UNEXPECTED),
				 errmsg("m3ter answered with a number beyond the range of a double precision number"),
				 errhint("Nothing was read from the answer.")));
	text = cJSON_PrintUnformatted(item);
	if (text == NULL)
		elog(ERROR, "could not print a JSON value");
	PG_TRY();
	{
		result = DirectFunctionCall1(jsonb_in, CStringGetDatum(text));
	}
	PG_FINALLY();
	{
		cJSON_free(text);
	}
	PG_END_TRY();
	return result;
}

/*
 * A jsonb argument as a cJSON tree (NULL for SQL NULL input), its strings in
 * the database encoding; what names the argument in errors.  The caller owns
 * the tree.  cJSON refuses nesting deeper than CJSON_NESTING_LIMIT (1000
 * levels), which jsonb allows.
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
	pfree(text);
	if (root == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s is nested too deeply", what),
				 errdetail("JSON values may be nested at most %d levels deep here.", CJSON_NESTING_LIMIT)));
	return root;
}

/*
 * The first string or key under item that is not valid UTF-8 (a SQL_ASCII
 * database's bytes), as a path from it appended to path:
 * "dataFields"[0]."name".  False when there is none.
 */
static bool
find_not_utf8(const cJSON *item, StringInfo path)
{
	const cJSON *child;
	int			len = path->len;
	int			i = 0;

	if (cJSON_IsString(item))
		return item->valuestring != NULL &&
			!pg_verify_mbstr(PG_UTF8, item->valuestring, strlen(item->valuestring), true);
	for (child = item->child; child != NULL; child = child->next, i++)
	{
		if (cJSON_IsObject(item))
		{
			appendStringInfo(path, "%s\"%s\"", len > 0 ? "." : "", child->string);
			if (!pg_verify_mbstr(PG_UTF8, child->string, strlen(child->string), true))
				return true;
		}
		else
			appendStringInfo(path, "[%d]", i);
		if (find_not_utf8(child, path))
			return true;
		path->len = len;
		path->data[len] = '\0';
	}
	return false;
}

/*
 * cJSON_PrintUnformatted() of a tree whose strings are in the database
 * encoding, as palloc'd UTF-8 for m3ter; what names it in errors.
 */
char *
m3ter_cjson_print_utf8(const cJSON *item, const char *what)
{
	char	   *volatile text = cJSON_PrintUnformatted(item);
	char	   *volatile result = NULL;

	if (text == NULL)
		elog(ERROR, "could not print a JSON value");
	PG_TRY();
	{
		const char *named = what;
		char	   *u;

		if (GetDatabaseEncoding() == PG_SQL_ASCII && has_high_bit(text, strlen(text)))
		{
			StringInfoData path;

			/* name the value in the error m3ter_server_to_utf8() raises */
			initStringInfo(&path);
			if (find_not_utf8(item, &path) && path.len > 0)
				named = psprintf("%s of %s", path.data, what);
		}
		u = m3ter_server_to_utf8(text, strlen(text), named);

		result = (u == text) ? pstrdup(text) : u;
	}
	PG_FINALLY();
	{
		cJSON_free(text);
	}
	PG_END_TRY();
	return result;
}
