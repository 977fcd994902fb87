/*-------------------------------------------------------------------------
 *
 * json.h
 *		cJSON helpers; text between the database encoding and m3ter's UTF-8 (json.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_GROUND_JSON_H
#define M3TER_GROUND_JSON_H

#include <cjson/cJSON.h>

#include "nodes/pg_list.h"
#include "utils/jsonb.h"

extern char *m3ter_server_to_utf8(const char *s, int len, const char *what);
extern char *m3ter_answer_message(const char *body);
extern cJSON *m3ter_parse_answer(const char *body, const char *what);
extern const char *m3ter_without_nul_escapes(const char *text);
extern cJSON *m3ter_parse_utf8(const char *text, const char **end);
extern cJSON *m3ter_parse_embedded(const char *text, const char *what);
extern char *m3ter_consume_page(cJSON *page, void (*take) (const cJSON *item, void *arg), void *arg,
								List **seen, int pages, const char *what);
extern Datum m3ter_cjson_to_jsonb(const cJSON *item);
extern cJSON *m3ter_jsonb_to_cjson(Jsonb *jb, const char *what);
extern char *m3ter_cjson_print_utf8(const cJSON *item, const char *what);


#endif							/* M3TER_GROUND_JSON_H */
