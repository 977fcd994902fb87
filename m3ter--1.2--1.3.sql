/* m3ter--1.2--1.3.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "ALTER EXTENSION m3ter UPDATE TO '1.3'" to load this file. \quit

-- Every object new or changed in 1.3 is written here once: make generates the
-- install script m3ter--1.3.sql from m3ter--1.2.sql followed by this script.

--
-- Messages (1.3): a missing uid, meter, account or ts is refused by the usage
-- check with a message that names the column; a NOT NULL constraint of the
-- column would answer first, with the whole row in its detail
--
ALTER TABLE m3ter.outbox ALTER COLUMN uid DROP NOT NULL,
                         ALTER COLUMN meter DROP NOT NULL,
                         ALTER COLUMN account DROP NOT NULL,
                         ALTER COLUMN ts DROP NOT NULL;

-- Privileges (1.3): the worker's figures are for the roles that may read the
-- other delivery figures (m3ter.databases: superusers and pg_monitor); a role
-- granted SELECT on m3ter.outbox_stats needs EXECUTE on it too
REVOKE EXECUTE ON FUNCTION m3ter_worker_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION m3ter_worker_status() TO pg_monitor;

--
-- Pacing (1.3): the last send slots the pacer gave, for checking that no
-- second ever holds more than the per-second limit allows
--
CREATE FUNCTION m3ter.pacing_slots()
RETURNS timestamptz[]
AS 'MODULE_PATHNAME', 'm3ter_pacing_slots'
LANGUAGE C VOLATILE;
REVOKE EXECUTE ON FUNCTION m3ter.pacing_slots() FROM PUBLIC;
