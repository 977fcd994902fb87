# m3ter for PostgreSQL (PGXS)

EXTENSION = m3ter
EXTVERSION = 1.3

MODULE_big = m3ter
OBJS = \
	src/m3ter.o \
	src/json.o \
	src/http.o \
	src/credentials.o \
	src/version.o \
	src/token.o \
	src/pacing.o \
	src/client.o \
	src/measurement.o \
	src/sender.o \
	src/catalog.o \
	src/outbox.o \
	src/claim_state.o \
	src/delivery.o \
	src/submit.o \
	src/meter.o \
	src/flush.o \
	src/outbox_check.o \
	src/uid.o \
	src/shmem.o \
	src/launcher.o \
	src/standby.o \
	src/worker.o \
	src/events.o

DATA = m3ter--1.0.sql m3ter--1.2.sql m3ter--1.0--1.1.sql m3ter--1.1--1.2.sql m3ter--1.2--1.3.sql
PGFILEDESC = "m3ter - usage metering for the m3ter billing platform"

# Warnings stay warnings here (packagers' newer compilers); test/lib.sh adds -Werror
PG_CPPFLAGS = -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare
SHLIB_LINK = -lcurl -lcjson

# pg_regress.  "make installcheck" runs the suites that any running server with
# the library installed can pass; REGRESS_STANDIN are those that need the
# library preloaded and m3ter.* pointed at the local stand-in: test/run.sh runs
# every suite with REGRESS='$(REGRESS_ALL)' against the cluster it starts.
REGRESS_ALL = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
REGRESS_STANDIN = settings surface secrets
REGRESS = $(filter-out $(REGRESS_STANDIN),$(REGRESS_ALL))
REGRESS_OPTS = --load-extension=m3ter

EXTRA_CLEAN = results regression.diffs regression.out

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# every object depends on the shared headers (PGXS tracks no header dependencies)
$(OBJS): $(wildcard src/*.h)

.PHONY: demo test bench

# The main job end to end on a throwaway cluster and the local m3ter stand-in
demo:
	test/demo.sh

# Every test: pg_regress, pgTAP and the scripted outbox tests
test:
	test/run.sh

bench:
	bench/run.sh
