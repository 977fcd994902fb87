#!/usr/bin/env bash
# test/package_major.sh -- the Debian package for a PostgreSQL major that Debian 12
# does not package (M3TER_PG_VERSION, built from Debian's source package by
# test/pg_source.sh), end to end (TAP output).
#
# pg_buildext needs the major's server development package, which Debian 12 does not
# have, so postgresql-<major>-m3ter is assembled the way it lays its files out: `make
# install` into a staging root with Debian's directories, a control file naming the
# same dependencies as debian/control, `dpkg-deb --build`.  Then: the package holds
# the library and SQL files and no test file, and depends on libcurl, cJSON and
# PostgreSQL <major>; unpacked over a copy of the built installation, its library is
# preloaded by a throwaway cluster that runs the main job (CREATE EXTENSION, usage
# rows delivered to the stand-in).  Nothing outside temporary directories changes.
#
#   M3TER_PG_VERSION=18 test/package_major.sh     or as a suite of run.sh on that major

unset M3TER_TMP PGHOST PGPORT PGDATABASE STANDIN_URL M3TER_VALGRIND
source "$(dirname "$0")/lib.sh"
set +e

PKG=postgresql-$M3TER_PG_VERSION-m3ter
ntests=0
nfailed=0

ok() {
    ntests=$((ntests + 1))
    if [ "$1" -eq 0 ]; then
        echo "ok $ntests - $2"
    else
        nfailed=$((nfailed + 1))
        echo "not ok $ntests - $2"
        [ -n "${3:-}" ] && [ -s "$3" ] && tail -30 "$3" | sed 's/^/#   /'
    fi
    return "$1"
}
bail() { echo "1..$ntests"; echo "Bail out! $*"; exit 1; }

cleanup() {
    set +e
    [ -n "${M3TER_TMP:-}" ] && [ -f "$M3TER_TMP/data/postmaster.pid" ] &&
        as_pg "$PGROOT_COPY/usr/lib/postgresql/$M3TER_PG_VERSION/bin/pg_ctl" -D "$M3TER_TMP/data" -m immediate stop >/dev/null 2>&1
    [ -n "${STANDIN_PID:-}" ] && kill "$STANDIN_PID" 2>/dev/null
    [ -z "${M3TER_KEEP:-}" ] && rm -rf "${M3TER_TMP:-/nonexistent}" "${BUILD:-/nonexistent}"
}
trap cleanup EXIT

[ "$M3TER_PG_VERSION" != "$M3TER_PG_DEBIAN_MAJOR" ] || bail "Debian packages $M3TER_PG_VERSION: use test/package.sh"
m3ter_install_deps >&2
m3ter_make_pg_root >&2 || bail "PostgreSQL $M3TER_PG_VERSION could not be built"
M3TER_PACKAGES="dpkg-dev" m3ter_install_deps >&2

BUILD=$(mktemp -d /tmp/m3ter-package.XXXXXX)
chmod 755 "$BUILD"
M3TER_TMP=$(mktemp -d /tmp/m3ter.XXXXXX)
chmod 755 "$M3TER_TMP"
export M3TER_TMP

# ---- build: make install into Debian's directories, dpkg-deb ---------------
version=$(sed -nE '1s/^m3ter \(([^)]+)\).*/\1/p' "$M3TER_ROOT/debian/changelog")
stage="$BUILD/stage"
libdir=/usr/lib/postgresql/$M3TER_PG_VERSION/lib
sharedir=/usr/share/postgresql/$M3TER_PG_VERSION
mkdir "$BUILD/src" && tar -C "$M3TER_ROOT" --exclude=.git --exclude=.pgroot -cf - . | tar -C "$BUILD/src" -xf -
(make -C "$BUILD/src" -s PG_CONFIG="$(m3ter_pg_config)" clean all &&
    make -C "$BUILD/src" -s PG_CONFIG="$(m3ter_pg_config)" install DESTDIR="$stage" \
        pkglibdir="$libdir" datadir="$sharedir" docdir="/usr/share/doc/$PKG") >"$BUILD/build.log" 2>&1
ok $? "make install into a staging root with Debian's directories" "$BUILD/build.log" || bail "no build"
rm -rf "$stage/usr/share/doc"
mkdir -p "$stage/usr/share/doc/$PKG" "$stage/DEBIAN"
cp "$M3TER_ROOT/README.md" "$M3TER_ROOT/CHANGELOG.md" "$M3TER_ROOT/debian/copyright" "$stage/usr/share/doc/$PKG/"
strip --strip-unneeded "$stage$libdir/m3ter.so"
cat >"$stage/DEBIAN/control" <<EOF
Package: $PKG
Version: $version
Architecture: $(dpkg --print-architecture)
Maintainer: $(sed -nE 's/^Maintainer: //p' "$M3TER_ROOT/debian/control")
Depends: postgresql-$M3TER_PG_VERSION, libc6, libcurl4 (>= 7.85.0), libcjson1 (>= 1.7)
Section: database
Priority: optional
Homepage: $(sed -nE 's/^Homepage: //p' "$M3TER_ROOT/debian/control")
Description: PostgreSQL extension metering usage for the m3ter billing platform
 Usage rows written to the m3ter.outbox table are delivered by a background worker
 to m3ter's Ingest API in full batches, exactly once by uid.
 .
 This package is built for PostgreSQL $M3TER_PG_VERSION.
EOF
deb="$BUILD/${PKG}_${version}_$(dpkg --print-architecture).deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >"$BUILD/deb.log" 2>&1
ok $? "dpkg-deb builds $(basename "$deb")" "$BUILD/deb.log" || bail "no package"

dpkg-deb -c "$deb" | awk '{print $NF}' | sed 's|^\./|/|' >"$BUILD/contents"
missing=""
for f in "$libdir/m3ter.so" "$sharedir/extension/m3ter.control" "$sharedir/extension/m3ter--1.3.sql"; do
    grep -qxF "$f" "$BUILD/contents" || missing="$missing $f"
done
{ echo "missing:$missing"; cat "$BUILD/contents"; } >"$BUILD/contents.log"
[ -z "$missing" ]
ok $? "it holds the library, m3ter.control and the install script in PostgreSQL $M3TER_PG_VERSION's directories" \
    "$BUILD/contents.log"
! grep -E '/(test|bench|expected|debian)/|standin|\.py$|\.sh$|\.bc$' "$BUILD/contents" >"$BUILD/extra"
ok $? "and no test, bench or bitcode file" "$BUILD/extra"
depends=$(dpkg-deb -f "$deb" Depends)
[[ "$depends" == *libcurl4* && "$depends" == *libcjson1* && "$depends" == *"postgresql-$M3TER_PG_VERSION,"* ]]
ok $? "it depends on libcurl, cJSON and PostgreSQL $M3TER_PG_VERSION ($depends)"

# ---- the main job with the packaged files ------------------------------------
# the package unpacked over a copy of the built installation: Debian's directories map
# to the copy's lib and share
PGROOT_COPY="$BUILD/pgroot"
prefix="$PGROOT_COPY/usr/lib/postgresql/$M3TER_PG_VERSION"
mkdir -p "$PGROOT_COPY/usr/lib/postgresql"
cp -a "$M3TER_PG_ROOT/usr/lib/postgresql/$M3TER_PG_VERSION" "$PGROOT_COPY/usr/lib/postgresql/"
rm -f "$prefix"/lib/m3ter.so "$prefix"/share/extension/m3ter*
dpkg-deb -x "$deb" "$BUILD/unpacked"
cp "$BUILD/unpacked$libdir/m3ter.so" "$prefix/lib/"
cp "$BUILD/unpacked$sharedir/extension/"m3ter* "$prefix/share/extension/"
M3TER_PG_ROOT=$PGROOT_COPY
m3ter_start_standin >&2
m3ter_start_cluster "shared_preload_libraries = 'm3ter'" >&2
pm=$(head -1 "$M3TER_TMP/data/postmaster.pid" 2>/dev/null)
grep -q " $prefix/lib/m3ter.so$" "/proc/${pm:-0}/maps" 2>/dev/null
ok $? "a PostgreSQL $M3TER_PG_VERSION cluster preloads the packaged library" "$M3TER_TMP/postgres.log" ||
    bail "no cluster with the packaged library"
q -c "CREATE EXTENSION m3ter" -c "INSERT INTO m3ter.outbox (uid, meter, account, measure)
      SELECT 'pkg-' || i, 'api_requests', 'acme', jsonb_build_object('requests', i)
        FROM generate_series(1, 200) i" >"$BUILD/job.log" 2>&1
ok $? "CREATE EXTENSION m3ter and 200 usage rows" "$BUILD/job.log"
accepted=0
for _ in $(seq 300); do
    accepted=$(q -Atc "SELECT count(*) FROM m3ter.outbox WHERE status = 'accepted'" 2>>"$BUILD/job.log")
    [ "$accepted" = 200 ] && break
    sleep 0.1
done
stored=$(standin GET /_control/summary | python3 -c 'import json, sys; print(json.load(sys.stdin)["accepted"])')
[ "$accepted" = 200 ] && [ "$stored" = 200 ]
ok $? "the worker delivers them: 200 accepted, 200 stored at the stand-in (got $accepted, $stored)" \
    "$M3TER_TMP/postgres.log"

echo "1..$ntests"
[ "$nfailed" -eq 0 ]
