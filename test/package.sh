#!/usr/bin/env bash
# test/package.sh -- the extension as users install it, end to end (TAP output).
#
# 1. META.json (PGXN) parses and names the version of m3ter.control's default_version.
# 2. postgresql-15-m3ter builds with dpkg-buildpackage from a copy of the tree (the
#    files git tracks or would track: nothing built in place leaks in), in a
#    temporary directory; the build runs `make installcheck` on a throwaway cluster.
#    lintian finds no error; the package holds the library and SQL files, no test
#    or bench file, and declares libcurl, cJSON and PostgreSQL 15.
# 3. `apt-get install ./postgresql-15-m3ter_*.deb`, then a throwaway cluster of the
#    system's PostgreSQL (/usr/lib/postgresql/15, whatever M3TER_PG_ROOT says) that
#    preloads the installed library runs the main job against the local stand-in:
#    CREATE EXTENSION, usage rows into m3ter.outbox, all accepted and received.
# 4. `apt-get remove --purge`: no m3ter file is left under /usr/lib/postgresql,
#    /usr/share/postgresql or /usr/share/doc.
# 5. The PGXN distribution (a zip of the same files) installs with `pgxn install`
#    and goes again with `pgxn uninstall`.
#
# It installs into and removes from the system's PostgreSQL directories (also the
# files a `make install` put there), so test/run.sh runs it last.  Needs root or
# sudo; installs its build tools with apt-get when missing.  Under a minute.
#
#   test/package.sh              or as a suite: test/run.sh package

# the system's PostgreSQL, not a private copy, and nothing of a calling suite's cluster
M3TER_PG_ROOT=
unset M3TER_TMP PGHOST PGPORT PGDATABASE STANDIN_URL M3TER_VALGRIND
source "$(dirname "$0")/lib.sh"
set +e

PKG=postgresql-$M3TER_PG_VERSION-m3ter
PKG_TOOLS="build-essential dpkg-dev debhelper fakeroot lintian postgresql-server-dev-all \
libcurl4-openssl-dev libcjson-dev postgresql-$M3TER_PG_VERSION postgresql-server-dev-$M3TER_PG_VERSION \
pgxnclient python3 curl git dpkg-repack"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo

ntests=0
nfailed=0
installed=0
prior_deb=""
simulated=0

# Report one test: ok STATUS NAME [LOG]; a failure shows the log's tail
ok() {
    ntests=$((ntests + 1))
    if [ "$1" -eq 0 ]; then
        echo "ok $ntests - $2"
    else
        nfailed=$((nfailed + 1))
        echo "not ok $ntests - $2"
        if [ -n "${3:-}" ] && [ -s "$3" ]; then
            tail -40 "$3" | sed 's/^/#   /'
        fi
    fi
    return "$1"
}

note() { echo "# $*"; }

# Stop here: the remaining tests cannot run
bail() {
    echo "1..$ntests"
    echo "Bail out! $*"
    exit 1
}

# Stop the cluster and the stand-in, purge the package if still installed, remove temporaries
cleanup() {
    set +e
    if [ -n "${M3TER_TMP:-}" ] && [ -f "$M3TER_TMP/data/postmaster.pid" ]; then
        as_pg "$(m3ter_pg_bindir)/pg_ctl" -D "$M3TER_TMP/data" -m immediate stop >/dev/null 2>&1
    fi
    [ -n "${STANDIN_PID:-}" ] && kill "$STANDIN_PID" 2>/dev/null
    if [ "$installed" = 1 ]; then
        $SUDO apt-get remove --purge -y -qq "$PKG" >/dev/null 2>&1
    fi
    put_back >/dev/null 2>&1
    if [ -z "${M3TER_KEEP:-}" ]; then
        [ -n "${M3TER_TMP:-}" ] && rm -rf "$M3TER_TMP"
        [ -n "${BUILD:-}" ] && rm -rf "$BUILD"
    fi
}
trap cleanup EXIT

# Put back the package that was installed before the suite (see "the user's package");
# the one that stood in for it goes
put_back() {
    [ -n "$prior_deb" ] || return 0
    if [ "$simulated" = 1 ]; then
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get remove --purge -y "$PKG"
    else
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --allow-downgrades --reinstall "$prior_deb"
    fi
    prior_deb=""
}

# ---- tools ----------------------------------------------------------------
M3TER_PACKAGES=$PKG_TOOLS m3ter_install_deps >&2

BUILD=$(mktemp -d /tmp/m3ter-package.XXXXXX)
chmod 755 "$BUILD"
M3TER_TMP=$(mktemp -d /tmp/m3ter.XXXXXX)
chmod 755 "$M3TER_TMP"
export M3TER_TMP

# ---- META.json ------------------------------------------------------------
cd "$M3TER_ROOT" || bail "no source tree"
default_version=$(sed -nE "s/^default_version *= *'([^']*)'.*/\1/p" m3ter.control)
[ -n "$default_version" ] || bail "m3ter.control names no default_version"
note "m3ter.control: default_version $default_version"

python3 - "$default_version" >"$BUILD/meta.log" 2>&1 <<'EOF'
import json, re, sys
dv = sys.argv[1]
meta = json.load(open("META.json"))
problems = []
for key in ("name", "abstract", "version", "maintainer", "license", "provides", "meta-spec"):
    if key not in meta:
        problems.append("META.json has no %r" % key)
if meta.get("meta-spec", {}).get("version") != "1.0.0":
    problems.append("meta-spec is not 1.0.0")
# PGXN versions are semantic versions: 1.1 is 1.1.0
semver = dv if dv.count(".") == 2 else dv + ".0"
if meta.get("version") != semver:
    problems.append("version %r, m3ter.control says %r (%s)" % (meta.get("version"), dv, semver))
ext = meta.get("provides", {}).get("m3ter", {})
if ext.get("version") != semver:
    problems.append("provides.m3ter.version %r, want %s" % (ext.get("version"), semver))
if ext.get("file") != "m3ter--%s.sql" % dv:
    problems.append("provides.m3ter.file %r, want m3ter--%s.sql" % (ext.get("file"), dv))
makefile = open("Makefile").read()
installed = " ".join(re.findall(r"^(?:DATA|DATA_built)\s*=\s*(.*)$", makefile, re.M))
installed = installed.replace("$(EXTVERSION)", re.search(r"^EXTVERSION\s*=\s*(\S+)", makefile, re.M).group(1))
installed += " " + " ".join(re.findall(r"^(?:BASE|UPGRADES)\s*=\s*(.*)$", makefile, re.M))
if ext.get("file") not in installed.split():
    problems.append("the Makefile's DATA does not install %r" % ext.get("file"))
pg = meta.get("prereqs", {}).get("runtime", {}).get("requires", {}).get("PostgreSQL")
if pg != "15.0.0":
    problems.append("prereqs.runtime.requires.PostgreSQL %r, want 15.0.0" % pg)
if meta.get("license") != "postgresql":
    problems.append("license %r, want postgresql" % meta.get("license"))
if "PostgreSQL License" not in open("README.md").read():
    problems.append("README.md does not name the PostgreSQL License")
if "Permission to use, copy, modify, and distribute this software" not in open("LICENSE").read():
    problems.append("LICENSE is not the PostgreSQL License")
deb = re.match(r"^m3ter \(([^)-]+)", open("debian/changelog").read())
if not deb or deb.group(1) != semver:
    problems.append("debian/changelog's version %r, want %s" % (deb and deb.group(1), semver))
if not re.search(r"^## %s\b" % re.escape(dv), open("CHANGELOG.md").read(), re.M):
    problems.append("CHANGELOG.md has no section for %s" % dv)
print("\n".join(problems))
sys.exit(1 if problems else 0)
EOF
ok $? "META.json parses and names version $default_version (as do debian/changelog and CHANGELOG.md)" "$BUILD/meta.log"

# ---- build ----------------------------------------------------------------
# a copy of what git tracks or would track, as a clean clone has it
mkdir "$BUILD/m3ter"
if git -C "$M3TER_ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$M3TER_ROOT" ls-files -z --cached --others --exclude-standard |
        (cd "$M3TER_ROOT" && xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' _) |
        tar -C "$M3TER_ROOT" --null -T - -cf - | tar -C "$BUILD/m3ter" -xf -
else
    cp -a "$M3TER_ROOT/." "$BUILD/m3ter/"
fi
# the PGXN distribution of the same files, as `git archive --format=zip --prefix=m3ter-X.Y.Z/` makes it
dist=m3ter-$(python3 -c 'import json; print(json.load(open("META.json"))["version"])')
python3 - "$BUILD/m3ter" "$BUILD/$dist.zip" "$dist" <<'EOF'
import os, sys, zipfile
src, out, prefix = sys.argv[1:]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for root, _, files in os.walk(src):
        for f in sorted(files):
            path = os.path.join(root, f)
            z.write(path, os.path.join(prefix, os.path.relpath(path, src)))
EOF

note "building $PKG in $BUILD"
t0=$(date +%s)
(cd "$BUILD/m3ter" && dpkg-buildpackage -us -uc) >"$BUILD/build.log" 2>&1
ok $? "dpkg-buildpackage -us -uc builds the package" "$BUILD/build.log" || bail "the package does not build"
note "build took $(($(date +%s) - t0)) s"
deb=$(ls "$BUILD"/"$PKG"_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || bail "no $PKG .deb was written"
note "$(basename "$deb")"

grep -qE 'All [0-9]+ tests passed' "$BUILD/build.log"
ok $? "the build ran make installcheck against a cluster of the library it built" "$BUILD/build.log"

chmod -R a+rX "$BUILD"
if [ "$(id -u)" -eq 0 ]; then
    runuser -u nobody -- env HOME="$BUILD" lintian "$BUILD"/*.changes >"$BUILD/lintian.log" 2>&1
else
    lintian "$BUILD"/*.changes >"$BUILD/lintian.log" 2>&1
fi
! grep -q '^E: ' "$BUILD/lintian.log"
ok $? "lintian finds no error" "$BUILD/lintian.log"
note "lintian warnings: $(grep -c '^W: ' "$BUILD/lintian.log")"

dpkg-deb -c "$deb" | awk '{print $NF}' | sed 's|^\./|/|' >"$BUILD/contents"
libdir=/usr/lib/postgresql/$M3TER_PG_VERSION/lib
extdir=/usr/share/postgresql/$M3TER_PG_VERSION/extension
missing=""
for f in "$libdir/m3ter.so" "$extdir/m3ter.control" "$extdir/m3ter--$default_version.sql"; do
    grep -qxF "$f" "$BUILD/contents" || missing="$missing $f"
done
{ echo "missing:$missing"; cat "$BUILD/contents"; } >"$BUILD/contents.log"
[ -z "$missing" ]
ok $? "the package holds the library, m3ter.control and m3ter--$default_version.sql" "$BUILD/contents.log"
! grep -E '/(test|bench|sql|expected|debian)/|standin|pgtap|\.py$|\.sh$|regression' "$BUILD/contents" >"$BUILD/extra"
ok $? "and no test, bench or build file" "$BUILD/extra"

depends=$(dpkg-deb -f "$deb" Depends)
note "Depends: $depends"
[[ "$depends" == *libcurl4* && "$depends" == *libcjson1* && "$depends" == *"postgresql-$M3TER_PG_VERSION "* ]]
ok $? "it depends on libcurl, cJSON and PostgreSQL $M3TER_PG_VERSION"

# ---- the user's package ---------------------------------------------------
# A postgresql-15-m3ter installed before this suite is put back at the end, at its
# version: dpkg-repack keeps a copy of it as installed.  On a machine without one, the
# package just built stands in for it, so that putting it back is tested too.
installed_version() { dpkg-query -W -f='${Status} ${Version}' "$PKG" 2>/dev/null | sed -n 's/^install ok installed //p'; }
prior_version=$(installed_version)
if [ -z "$prior_version" ]; then
    simulated=1
    (cd "$BUILD" && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y "./$(basename "$deb")") \
        >"$BUILD/prior.log" 2>&1
    prior_version=$(installed_version)
fi
mkdir -p "$BUILD/prior" && chmod 777 "$BUILD/prior"
(cd "$BUILD/prior" && $SUDO dpkg-repack "$PKG") >>"$BUILD/prior.log" 2>&1
prior_deb=$(ls "$BUILD"/prior/*.deb 2>/dev/null | head -1)
[ -n "$prior_version" ] && [ -n "$prior_deb" ]
ok $? "the $PKG installed before (${prior_version:-none}$([ $simulated = 1 ] && echo ', standing in for a user'"'"'s')) is kept to be put back" \
    "$BUILD/prior.log"
$SUDO dpkg -V "$PKG" >"$BUILD/verify-before.log" 2>&1

# ---- install --------------------------------------------------------------
# m3ter files already there (a make install): the package takes over those it holds
m3ter_files() {
    find /usr/lib/postgresql /usr/share/postgresql /usr/share/doc -path '*m3ter*' \
        \( ! -type d -o -type d -empty \) 2>/dev/null | sort
}
m3ter_files >"$BUILD/before"
(cd "$BUILD" && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install --reinstall -y "./$(basename "$deb")") \
    >"$BUILD/install.log" 2>&1
rc=$?
[ $rc -eq 0 ] && installed=1
dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -q "install ok installed"
ok $((rc + $?)) "apt-get install ./$(basename "$deb")" "$BUILD/install.log" || bail "the package does not install"
dpkg -L "$PKG" | sort >"$BUILD/owned"

# ---- the main job from the installed package ------------------------------
m3ter_start_standin >&2
m3ter_start_cluster "shared_preload_libraries = 'm3ter'" >&2
pm=$(head -1 "$M3TER_TMP/data/postmaster.pid" 2>/dev/null)
grep -q " $libdir/m3ter.so$" "/proc/${pm:-0}/maps" 2>/dev/null
ok $? "a cluster of the system's PostgreSQL preloads the installed $libdir/m3ter.so" \
    "$M3TER_TMP/postgres.log" || bail "no cluster with the installed library"

q -c "CREATE EXTENSION m3ter" >"$BUILD/job.log" 2>&1
ok $? "CREATE EXTENSION m3ter" "$BUILD/job.log"
got=$(q -Atc "SELECT extversion FROM pg_extension WHERE extname = 'm3ter'" 2>>"$BUILD/job.log")
[ "$got" = "$default_version" ]
ok $? "at version $default_version (got '$got')" "$BUILD/job.log"

q -c "INSERT INTO m3ter.outbox (uid, meter, account, measure, \"where\")
      SELECT 'pkg-' || i, 'api_requests', 'acme', jsonb_build_object('requests', i),
             '{\"region\": \"eu-west-1\"}'
        FROM generate_series(1, 200) i" >>"$BUILD/job.log" 2>&1
ok $? "200 usage rows inserted into m3ter.outbox" "$BUILD/job.log"

accepted=0
for _ in $(seq 300); do
    accepted=$(q -Atc "SELECT count(*) FROM m3ter.outbox WHERE status = 'accepted'" 2>>"$BUILD/job.log")
    [ "$accepted" = 200 ] && break
    sleep 0.1
done
if [ "$accepted" != 200 ]; then
    q -c "SELECT status, http_status, error, count(*) FROM m3ter.outbox GROUP BY 1, 2, 3" >>"$BUILD/job.log" 2>&1
    tail -20 "$M3TER_TMP/postgres.log" >>"$BUILD/job.log"
fi
[ "$accepted" = 200 ]
ok $? "the worker delivers them: 200 accepted (got $accepted)" "$BUILD/job.log"

standin GET /_control/measurements >"$BUILD/received.json" 2>>"$BUILD/job.log"
q -Atc "SELECT uid FROM m3ter.outbox ORDER BY uid" >"$BUILD/uids" 2>>"$BUILD/job.log"
python3 - "$BUILD/received.json" "$BUILD/uids" >"$BUILD/received.log" 2>&1 <<'EOF'
import json, sys
got = json.load(open(sys.argv[1]))
uids = set(open(sys.argv[2]).read().split())
stored = {m["uid"]: m for m in got}
want = {"pkg-%d" % i for i in range(1, 201)}
problems = []
if set(stored) != want or uids != want:
    problems.append("stand-in has %d uids, outbox %d, want the 200 pkg-N" % (len(stored), len(uids)))
total = sum(m.get("measure", {}).get("requests", 0) for m in stored.values())
if total != sum(range(1, 201)):
    problems.append("requests add up to %s, want %d" % (total, sum(range(1, 201))))
if any(m.get("where") != {"region": "eu-west-1"} or m.get("account") != "acme" for m in stored.values()):
    problems.append("a measurement lost its account or dimensions")
print("\n".join(problems))
sys.exit(1 if problems else 0)
EOF
ok $? "the stand-in received the 200 measurements, each once and intact" "$BUILD/received.log"

# make installcheck, the PGXS way, against this running server with the installed library
make -C "$BUILD/m3ter" -s PG_CONFIG="$(m3ter_pg_config)" installcheck >"$BUILD/installcheck.log" 2>&1
rc=$?
[ -f "$BUILD/m3ter/regression.diffs" ] && cat "$BUILD/m3ter/regression.diffs" >>"$BUILD/installcheck.log"
ok $rc "make installcheck passes against the running server" "$BUILD/installcheck.log"

as_pg "$(m3ter_pg_bindir)/pg_ctl" -D "$M3TER_TMP/data" -m fast -w stop >/dev/null 2>&1

# ---- remove ---------------------------------------------------------------
DEBIAN_FRONTEND=noninteractive $SUDO apt-get remove --purge -y "$PKG" >"$BUILD/remove.log" 2>&1
rc=$?
[ $rc -eq 0 ] && installed=0
ok $rc "apt-get remove --purge $PKG" "$BUILD/remove.log"
! dpkg -L "$PKG" 2>/dev/null | grep -q m3ter
ok $? "dpkg lists no file of it any more"
while read -r f; do
    [ -e "$f" ] && [ ! -d "$f" ] && echo "$f"
done <"$BUILD/owned" >"$BUILD/left-owned"
[ ! -s "$BUILD/left-owned" ]
ok $? "every file the package installed is gone" "$BUILD/left-owned"
# m3ter files that were there before and are not the package's (a make install of
# other sources) are not dpkg's to remove; anything else left is a failure
comm -23 "$BUILD/before" "$BUILD/owned" >"$BUILD/foreign"
m3ter_files | comm -23 - "$BUILD/foreign" >"$BUILD/left"
[ ! -s "$BUILD/left" ]
ok $? "no m3ter file is left under /usr/lib/postgresql, /usr/share/postgresql or /usr/share/doc" "$BUILD/left"
if [ -s "$BUILD/foreign" ]; then
    note "not the package's, left as they were (installed before by make install of other sources):"
    sed 's/^/#   /' "$BUILD/foreign"
fi

# ---- PGXN -----------------------------------------------------------------
# the distribution installs with the PGXN client (it reads META.json) and uninstalls
pgxn_sudo=--nosudo
[ "$(id -u)" -ne 0 ] && pgxn_sudo=--sudo
(cd "$BUILD" && pgxn install --yes --make make $pgxn_sudo --pg_config "$(m3ter_pg_config)" "./$dist.zip") \
    >"$BUILD/pgxn.log" 2>&1
rc=$?
[ -f "$extdir/m3ter--$default_version.sql" ] && [ -f "$libdir/m3ter.so" ]
ok $((rc + $?)) "pgxn install ./$dist.zip builds and installs it" "$BUILD/pgxn.log"
(cd "$BUILD" && pgxn uninstall --yes --make make $pgxn_sudo --pg_config "$(m3ter_pg_config)" "./$dist.zip") \
    >>"$BUILD/pgxn.log" 2>&1
rc=$?
m3ter_files | grep -v '^/usr/share/doc/' | comm -23 - "$BUILD/foreign" >"$BUILD/left"
[ ! -s "$BUILD/left" ]
ok $((rc + $?)) "pgxn uninstall removes it again" "$BUILD/left"

# ---- put back what was there ----------------------------------------------
if [ "$simulated" = 0 ]; then
    put_back >"$BUILD/restore.log" 2>&1
    [ "$(installed_version)" = "$prior_version" ]
    ok $? "the $PKG installed before is installed again, at $prior_version" "$BUILD/restore.log"
    $SUDO dpkg -V "$PKG" >"$BUILD/verify.log" 2>&1
    cmp -s "$BUILD/verify-before.log" "$BUILD/verify.log"
    ok $? "dpkg -V $PKG says what it said before" "$BUILD/verify.log"
else
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --allow-downgrades --reinstall "$prior_deb" \
        >"$BUILD/restore.log" 2>&1
    [ "$(installed_version)" = "$prior_version" ]
    ok $? "the package standing in for a user's is installed again, at $prior_version" "$BUILD/restore.log"
    $SUDO dpkg -V "$PKG" >"$BUILD/verify.log" 2>&1
    [ ! -s "$BUILD/verify.log" ]
    ok $? "dpkg -V $PKG is clean: its files are as the package has them" "$BUILD/verify.log"
    put_back >>"$BUILD/restore.log" 2>&1
    [ -z "$(installed_version)" ]
    ok $? "and it goes again, leaving the system as the suite found it" "$BUILD/restore.log"
fi

echo "1..$ntests"
[ "$nfailed" -eq 0 ]
