# test/pg_source.sh -- a PostgreSQL major that Debian 12 does not package, built from
# Debian's source package; sourced by test/lib.sh.
#
# Debian 12 packages PostgreSQL 15.  Another major (18 from sid, 17 from trixie) is
# built from the upstream tarball of Debian's source package: apt reads the sources'
# signed indexes through a private configuration whose only sources are deb-src lines
# (the system's own sources and lists stay untouched), the tarball comes from
# Debian's pool and is checked against the index's sha256, then configured and built
# into a private prefix, with pgTAP and pg_cron built the same way.  The result is kept
# in M3TER_PG_CACHE (default /var/cache/m3ter/postgresql) between runs when the
# machine keeps it: the installation under <cache>/<major>/usr/lib/postgresql/<major>
# (laid out as Debian's, so M3TER_PG_ROOT=<cache>/<major> works like the copy of the
# system's), the built source tree under <cache>/<major>/src for PostgreSQL's own
# regression suite.  A build takes about five minutes on two cores.

M3TER_PG_CACHE=${M3TER_PG_CACHE:-/var/cache/m3ter/postgresql}
M3TER_PG_BUILD_PACKAGES="bison flex gcc make pkg-config libreadline-dev zlib1g-dev libicu-dev \
libssl-dev xz-utils bzip2 perl curl"
# Debian suites whose sources serve the majors and extensions Debian 12 lacks
M3TER_DEBSRC_SUITES="sid trixie"
M3TER_DEBIAN_MIRROR=${M3TER_DEBIAN_MIRROR:-http://deb.debian.org/debian}

# apt-get or apt-cache ($1) with the private configuration: deb-src lines only,
# lists in the cache
m3ter_apt_src() {
    local dir="$M3TER_PG_CACHE/apt" tool=$1 s
    shift
    if [ ! -s "$dir/sources.list" ]; then
        mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
        for s in $M3TER_DEBSRC_SUITES; do
            echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $M3TER_DEBIAN_MIRROR $s main"
        done >"$dir/sources.list"
    fi
    "$tool" -q -o Dir::Etc::SourceList="$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::State::Lists="$dir/lists" -o Dir::Cache="$dir/cache" -o APT::Sandbox::User=root "$@"
}

# Upstream tarballs the archive may no longer list in its index, with their sha256:
# pg_cron 1.6.7 (the first with PostgreSQL 18) stays in the pool after sid moved on
M3TER_PINNED_SOURCES="pg-cron pool/main/p/pg-cron pg-cron_1.6.7.orig.tar.gz \
d950bc29155f31017567e23a31d268ff672e98276c0e9d062512fb7870351f03"

# The upstream tarballs of source package $1 as "directory file sha256" lines, those
# of Debian's signed index first (newest version first), then the pinned ones
m3ter_source_tarballs() {
    m3ter_apt_src apt-cache showsrc "$1" 2>/dev/null | awk '
        function flush() { for (i = 1; i <= n; i++) print dir, files[i]; n = 0; dir = "" }
        /^$/ { flush() }
        /^Directory: / { dir = $2 }
        /^Checksums-Sha256:/ { sums = 1; next }
        /^[^ ]/ { sums = 0 }
        sums && $3 ~ /\.orig\.tar\./ { files[++n] = $3 " " $1 }
        END { flush() }'
    echo "$M3TER_PINNED_SOURCES" | xargs -n4 | awk -v p="$1" '$1 == p { print $2, $3, $4 }'
}

# Fetch the upstream tarball of Debian's source package $1 into $2, checked against
# its sha256, and unpack it there; prints the unpacked directory
m3ter_fetch_source() {
    local pkg=$1 into=$2 dir file sum
    mkdir -p "$into"
    while read -r dir file sum; do
        curl -fsS -o "$into/$file" "$M3TER_DEBIAN_MIRROR/$dir/$file" 2>/dev/null || continue
        if ! echo "$sum  $into/$file" | sha256sum -c --quiet - >/dev/null 2>&1; then
            log "$file: the sha256 does not match Debian's index"
            rm -f "$into/$file"
            continue
        fi
        tar -xf "$into/$file" -C "$into"
        find "$into" -mindepth 1 -maxdepth 1 -type d | head -1
        return 0
    done < <(m3ter_source_tarballs "$pkg")
    return 1
}

# Build PostgreSQL $1 with pgTAP and pg_cron into $M3TER_PG_CACHE/$1, once
m3ter_build_pg_source() {
    local major=$1 root="$M3TER_PG_CACHE/$1" src prefix ext
    prefix="$root/usr/lib/postgresql/$major"
    [ -f "$root/.built" ] && return 0
    log "building PostgreSQL $major from Debian's source package into $root"
    M3TER_PACKAGES=$M3TER_PG_BUILD_PACKAGES m3ter_install_deps
    rm -rf "$root"
    mkdir -p "$root/src"
    m3ter_apt_src apt-get update -qq >/dev/null
    src=$(m3ter_fetch_source "postgresql-$major" "$root/src") ||
        { log "Debian's archive serves no source of postgresql-$major"; return 1; }
    (cd "$src" && ./configure -q --prefix="$prefix" --with-icu --with-openssl >"$root/configure.log" 2>&1 &&
        make -s -j"$(nproc)" >"$root/build.log" 2>&1 && make -s install >>"$root/build.log" 2>&1) ||
        { tail -30 "$root/configure.log" "$root/build.log" >&2; return 1; }
    for ext in pgtap pg-cron; do
        local dir
        dir=$(m3ter_fetch_source "$ext" "$root/src/$ext") || { log "no source of $ext"; return 1; }
        make -s -C "$dir" PG_CONFIG="$prefix/bin/pg_config" >>"$root/build.log" 2>&1 &&
            make -s -C "$dir" PG_CONFIG="$prefix/bin/pg_config" install >>"$root/build.log" 2>&1 ||
            { tail -30 "$root/build.log" >&2; return 1; }
    done
    touch "$root/.built"
}

# The built source tree of major $1 (for its regression suite)
m3ter_pg_source_tree() {
    find "$M3TER_PG_CACHE/$1/src" -mindepth 1 -maxdepth 1 -type d -name "postgresql-*" | head -1
}
