/* m3ter--1.2--1.3.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "ALTER EXTENSION m3ter UPDATE TO '1.3'" to load this file. \quit

-- Every object new or changed in 1.3 is written here once: make generates the
-- install script m3ter--1.3.sql from m3ter--1.2.sql followed by this script.
