/*-------------------------------------------------------------------------
 *
 * spi_util.h
 *		Small helpers for the files that query through SPI (spi_util.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef M3TER_SPI_UTIL_H
#define M3TER_SPI_UTIL_H

#include "executor/spi.h"

extern SPIPlanPtr m3ter_keep_plan(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes);
extern int	m3ter_execute_by_key(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes,
								 Datum *values, const char *nulls);
extern Datum m3ter_int8_array(const int64 *values, int n);

#endif							/* M3TER_SPI_UTIL_H */
