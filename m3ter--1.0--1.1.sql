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
