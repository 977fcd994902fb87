/* m3ter--1.2--1.3.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "ALTER EXTENSION m3ter UPDATE TO '1.3'" to load this file. \quit

-- CREATE EXTENSION m3ter runs m3ter--1.2.sql and then this script, so every
-- object new or changed in 1.3 is written here once.
