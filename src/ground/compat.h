/*-------------------------------------------------------------------------
 *
 * compat.h
 *		Differences between the PostgreSQL majors m3ter builds against.
 *
 * m3ter supports PostgreSQL 15 and later.  Every piece of code that depends
 * on the server version sits here, behind PG_VERSION_NUM, so the other
 * files are written once against the newest API:
 *	- pg_noreturn (18) is written before a declaration; before 18 it is
 *	  pg_attribute_noreturn(), GCC's attribute, which may stand there too;
 *	- PG_MODULE_MAGIC_EXT (18) also names the library and its version;
 *	- pg_b64_encode() takes uint8 input from 18 on, char before;
 *	- a virtual transaction id names its process by procNumber from 17 on,
 *	  by backendId before;
 *	- the varlena macros (SET_VARSIZE, VARDATA) are in varatt.h from 16 on.
 * Included by the headers that need it (request.h for pg_noreturn).
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_COMPAT_H
#define M3TER_COMPAT_H

#include "postgres.h"

#include "fmgr.h"

#if PG_VERSION_NUM < 150000
#error "m3ter needs PostgreSQL 15 or later"
#endif

/* A function that does not return, written before its declaration */
#ifndef pg_noreturn
#define pg_noreturn pg_attribute_noreturn()
#endif

/* The module magic block, with name and version where the server keeps them */
#ifdef PG_MODULE_MAGIC_EXT
#define M3TER_MODULE_MAGIC PG_MODULE_MAGIC_EXT(.name = "m3ter", .version = "1.3")
#else
#define M3TER_MODULE_MAGIC PG_MODULE_MAGIC
#endif

/* The input type of pg_b64_encode() */
#if PG_VERSION_NUM >= 160000
#include "varatt.h"
#endif

#if PG_VERSION_NUM >= 180000
typedef uint8 m3ter_b64_byte;
#else
typedef char m3ter_b64_byte;
#endif

/* The process slot of a virtual transaction id */
#if PG_VERSION_NUM >= 170000
#define M3TER_VXID_PROC(vxid) ((vxid).procNumber)
#else
#define M3TER_VXID_PROC(vxid) ((vxid).backendId)
#endif

#endif							/* M3TER_COMPAT_H */
