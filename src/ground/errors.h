/*-------------------------------------------------------------------------
 *
 * errors.h
 *		The extension's version, m3ter's limits and the SQLSTATEs of class M3.
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_GROUND_ERRORS_H
#define M3TER_GROUND_ERRORS_H

#define M3TER_VERSION "1.3"

/* Limits of the Ingest API: 1..1000 measurements, payload under 512,000 bytes */
#define M3TER_MAX_MEASUREMENTS	1000
#define M3TER_MAX_PAYLOAD_BYTES 512000
/* m3ter's Data Explorer (the usage query) takes one request a second */
#define M3TER_EXPLORER_PER_SECOND 1

/* SQLSTATEs for failures reported by (or on the way to) m3ter: class M3 */
#define ERRCODE_M3TER_NETWORK		MAKE_SQLSTATE('M','3','0','0','0')
#define ERRCODE_M3TER_AUTH			MAKE_SQLSTATE('M','3','4','0','1')
#define ERRCODE_M3TER_BAD_REQUEST	MAKE_SQLSTATE('M','3','4','0','0')
#define ERRCODE_M3TER_FORBIDDEN		MAKE_SQLSTATE('M','3','4','0','3')
#define ERRCODE_M3TER_NOT_FOUND		MAKE_SQLSTATE('M','3','4','0','4')
#define ERRCODE_M3TER_TOO_LARGE		MAKE_SQLSTATE('M','3','4','1','3')
#define ERRCODE_M3TER_RATE_LIMITED	MAKE_SQLSTATE('M','3','4','2','9')
#define ERRCODE_M3TER_SERVER		MAKE_SQLSTATE('M','3','5','0','0')
#define ERRCODE_M3TER_UNEXPECTED	MAKE_SQLSTATE('M','3','3','0','0')
/* A function that writes was called on a standby (server in recovery) */
#define ERRCODE_M3TER_STANDBY		MAKE_SQLSTATE('M','3','R','0','1')

/* The bytes of a request body around its measurements */
#define M3TER_PAYLOAD_OVERHEAD ((int) sizeof("{\"measurements\":[]}") - 1)

#endif							/* M3TER_GROUND_ERRORS_H */
