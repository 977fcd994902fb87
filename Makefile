# m3ter for PostgreSQL (PGXS)

EXTENSION = m3ter
EXTVERSION = 1.1

MODULE_big = m3ter
OBJS = \
	src/m3ter.o \
	src/json.o \
	src/http.o \
	src/oauth.o \
	src/client.o \
	src/measurement.o \
	src/submit.o \
	src/meter.o \
	src/outbox.o \
	src/outbox_check.o \
	src/shmem.o \
	src/worker.o \
	src/catalog.o \
	src/events.o

DATA = m3ter--1.0.sql m3ter--1.1.sql m3ter--1.0--1.1.sql
PGFILEDESC = "m3ter - usage metering for the m3ter billing platform"

PG_CPPFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare
SHLIB_LINK = -lcurl -lcjson

# pg_regress runs against the cluster that test/run.sh starts
REGRESS = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
REGRESS_OPTS = --load-extension=m3ter

EXTRA_CLEAN = results regression.diffs regression.out

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

.PHONY: demo test bench

# The main job end to end on a throwaway cluster and the local m3ter stand-in
demo:
	test/demo.sh

# Every test: pg_regress, pgTAP and the scripted outbox tests
test:
	test/run.sh

bench:
	bench/run.sh
