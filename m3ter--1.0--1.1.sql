/* m3ter--1.0--1.1.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION m3ter UPDATE TO '1.1'" to load this file. \quit

--
-- pg_dump (1.1): the outbox is data, not part of the extension's definition;
-- dumps carry its rows and the position of its id sequence.
--
SELECT pg_catalog.pg_extension_config_dump('m3ter.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('m3ter.outbox_id_seq', '');

--
-- Schema (1.1): nothing to do on update.  New installs refuse a schema m3ter
-- that is not the extension's, or use it when it is the target schema
-- (CREATE EXTENSION m3ter SCHEMA m3ter); a 1.0 install already has its own.
--

--
-- Delivery: claims in the order rows fall due, in-flight records, the
-- committing flush procedure, retention by index
--
DROP INDEX m3ter.outbox_pending_idx;
CREATE INDEX outbox_due_idx ON m3ter.outbox (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX outbox_accepted_idx ON m3ter.outbox (accepted_at) WHERE status = 'accepted';

CREATE TABLE m3ter.inflight (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_pid   int NOT NULL,
    owner_start timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    ids         bigint[] NOT NULL
);
COMMENT ON TABLE m3ter.inflight IS
    'Outbox rows sent and not yet answered, by sender. Written by the extension only.';
REVOKE ALL ON m3ter.inflight FROM PUBLIC;

DROP FUNCTION m3ter.backoff_delay(int, int);

CREATE PROCEDURE m3ter.flush(max_rows int DEFAULT NULL, INOUT result jsonb DEFAULT NULL)
AS 'MODULE_PATHNAME', 'm3ter_flush_procedure'
LANGUAGE C;
COMMENT ON PROCEDURE m3ter.flush(int, jsonb) IS
    'Delivers the due rows of m3ter.outbox now, committing as it goes; returns what happened.';
REVOKE EXECUTE ON PROCEDURE m3ter.flush(int, jsonb) FROM PUBLIC;

COMMENT ON FUNCTION m3ter_flush(int) IS
    'Delivers the due rows of m3ter.outbox now (all, or max_rows) in the caller''s transaction and returns what happened.';
