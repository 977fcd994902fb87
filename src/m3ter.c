/*-------------------------------------------------------------------------
 *
 * m3ter.c
 *		Module entry point of the m3ter extension.
 *
 * _PG_init only delegates: it defines the settings (settings.c), and when
 * the library is loaded through shared_preload_libraries each module that
 * keeps state in shared memory installs it, and the launcher (launcher.c)
 * is registered; it starts a worker (worker.c) in every database that has
 * the extension.  The library also works without preloading: delivery then
 * runs through m3ter.flush() alone.
 *
 * The source tree is layered; a file calls only files of its own layer or
 * below (test/layers.py checks it on the built objects):
 *	m3ter.c		this file
 *	entry/		SQL-callable functions by topic, the launcher and the worker
 *	outbox/		the outbox: claims, one delivery loop, catalog checks, events,
 *				the workers' shared slots
 *	client/		m3ter's APIs: HTTP, answers, pacing, token, calls, the sender
 *	ground/		settings, error codes, JSON, measurements, SPI helpers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"

#include "client/pacing.h"
#include "client/token.h"
#include "entry/launcher.h"
#include "ground/compat.h"
#include "ground/settings.h"
#include "outbox/catalog.h"
#include "outbox/slots.h"

M3TER_MODULE_MAGIC;

void		_PG_init(void);

/* Load the module: settings always; shared state and the launcher when preloaded */
void
_PG_init(void)
{
	m3ter_define_settings();

	if (process_shared_preload_libraries_in_progress)
	{
		m3ter_slots_shmem_install();
		m3ter_pacing_shmem_install();
		m3ter_token_shmem_install();
		m3ter_catalog_shmem_install();
		/*
		 * not under pg_upgrade (binary-upgrade mode): a worker would connect to
		 * databases it is restoring and write to tables whose files it replaces
		 */
		if (!IsBinaryUpgrade)
			m3ter_launcher_install();
	}
}
