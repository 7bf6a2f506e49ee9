#!/usr/bin/env bash
# Builds the relay's Debian package with cargo-deb and checks it without
# installing it on this machine:
#   - the control fields, the file list with every path, mode and owner, and
#     that packaged files are the repository's files;
#   - the conffile and the maintainer scripts (syntax, and the systemd,
#     sysusers, tmpfiles and sysctl steps in them);
#   - the sysusers.d and tmpfiles.d files, applied to a throwaway root;
#   - the postinst's sysctl step, run against a fake /proc/sys;
#   - the extracted binary: --version and check-config on the packaged config;
#   - lintian, when it is installed (errors fail the check).
#
# Usage: bash packaging/check-deb.sh            build, then check
#        bash packaging/check-deb.sh FILE.deb   check a package already built
# Needs: cargo-deb (`cargo install --locked cargo-deb`), dpkg-dev (dpkg-shlibdeps,
# which cargo-deb runs for Depends, and dpkg-parsechangelog), binutils (objcopy,
# for the dbgsym package), file, systemd (systemd-sysusers, systemd-tmpfiles,
# systemd-analyze); lintian optional. Run as root, as CI does (systemd-tmpfiles
# gives the throwaway state directory to the relay user).
set -euo pipefail
cd "$(dirname "$0")/.."

failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}
ok() { echo "ok: $*"; }

if [ $# -ge 1 ]; then
    deb=$1
else
    echo "== cargo deb -p lanrage-relay --locked"
    # cargo-deb prints the paths of the packages it wrote (the .deb, and the
    # .ddeb of debug symbols); the .deb is the one to check.
    deb=$(cargo deb -p lanrage-relay --locked | grep '\.deb$' | tail -n 1)
fi
[ -f "$deb" ] || { echo "no package at '$deb'" >&2; exit 1; }
echo "== checking $deb"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
control=$work/control
dpkg-deb -x "$deb" "$root"
dpkg-deb -e "$deb" "$control"

# --- control fields -----------------------------------------------------------
version=$(cargo metadata --format-version 1 --no-deps --locked |
    sed -n 's/.*"name":"lanrage-relay","version":"\([^"]*\)".*/\1/p')
[ -n "$version" ] || { echo "cannot read lanrage-relay's version from cargo metadata" >&2; exit 1; }
field() { dpkg-deb -f "$deb" "$1"; }
[ "$(field Package)" = lanrage-relay ] && ok "Package: lanrage-relay" || fail "Package is '$(field Package)'"
[ "$(field Version)" = "$version-1" ] && ok "Version: $version-1" || fail "Version is '$(field Version)', expected $version-1"
arch=$(dpkg --print-architecture)
[ "$(field Architecture)" = "$arch" ] && ok "Architecture: $arch" || fail "Architecture is '$(field Architecture)'"
# The synopsis is one line under 80 characters (Debian policy 3.4.1); cargo-deb
# wraps a longer Cargo description into the extended one.
synopsis=$(field Description | sed -n 1p)
[ "${#synopsis}" -lt 80 ] && ok "synopsis: $synopsis" || fail "synopsis is ${#synopsis} characters: $synopsis"
depends=$(field Depends)
case "$depends" in
*libc6*) ok "Depends names libc6 (dpkg-shlibdeps ran)" ;;
*) fail "Depends lacks libc6: '$depends'" ;;
esac
case "$depends" in
*"systemd | systemd-standalone-sysusers | systemd-sysusers"*) ok "Depends names a systemd-sysusers provider" ;;
*) fail "Depends lacks 'systemd | systemd-standalone-sysusers | systemd-sysusers': '$depends'" ;;
esac

# --- files: paths, modes, owners ---------------------------------------------
# Every regular file in the package, as "mode owner path"; nothing else may be there.
expected_files=$(sort <<'EOF'
-rw-r--r-- root/root ./etc/lanrage/relay.yaml
-rw-r--r-- root/root ./usr/lib/sysctl.d/30-lanrage-relay.conf
-rw-r--r-- root/root ./usr/lib/systemd/system/lanrage-relay.service
-rw-r--r-- root/root ./usr/lib/sysusers.d/lanrage-relay.conf
-rw-r--r-- root/root ./usr/lib/tmpfiles.d/lanrage-relay.conf
-rw-r--r-- root/root ./usr/share/doc/lanrage-relay/changelog.Debian.gz
-rw-r--r-- root/root ./usr/share/doc/lanrage-relay/configuration.md
-rw-r--r-- root/root ./usr/share/doc/lanrage-relay/copyright
-rw-r--r-- root/root ./usr/share/doc/lanrage-relay/operations.md
-rw-r--r-- root/root ./usr/share/lintian/overrides/lanrage-relay
-rwxr-xr-x root/root ./usr/bin/lanrage-relay
EOF
)
# dpkg-deb shows owners by name or, for archives written with numeric ids
# (cargo-deb), as 0/0: both are root.
listing=$(dpkg-deb -c "$deb" | sed 's|^\([^ ]*\) 0/0 |\1 root/root |')
actual_files=$(awk '$1 ~ /^-/ { print $1, $2, $6 }' <<<"$listing" | sort)
if [ "$actual_files" = "$expected_files" ]; then
    ok "files, modes and owners as expected ($(wc -l <<<"$actual_files") files)"
else
    fail "file list differs (- expected, + package):"
    diff <(echo "$expected_files") <(echo "$actual_files") >&2 || true
fi
# No symlinks or device files; directories 0755 root (dpkg creates /var/lib/lanrage-relay
# through tmpfiles.d and StateDirectory=, not from the archive).
odd=$(awk '$1 !~ /^[-d]/ || ($1 ~ /^d/ && ($1 != "drwxr-xr-x" || $2 != "root/root"))' <<<"$listing")
[ -z "$odd" ] && ok "directories 0755 root/root, no other entry types" || fail "unexpected entries: $odd"
grep -q ' \./var/' <<<"$listing" && fail "the archive ships something under /var" || ok "nothing shipped under /var"

# Packaged files are the repository's.
same() { # packaged-path repo-path
    if cmp -s "$root/$1" "$2"; then ok "/$1 is $2"; else fail "/$1 differs from $2"; fi
}
same etc/lanrage/relay.yaml systemd/relay.example.yaml
same usr/lib/systemd/system/lanrage-relay.service systemd/lanrage-relay.service
same usr/lib/sysusers.d/lanrage-relay.conf systemd/lanrage-relay.sysusers
same usr/lib/tmpfiles.d/lanrage-relay.conf systemd/lanrage-relay.tmpfile
same usr/lib/sysctl.d/30-lanrage-relay.conf systemd/lanrage-relay.sysctl
same usr/share/lintian/overrides/lanrage-relay packaging/debian/lanrage-relay.lintian-overrides
changelog_version=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
[ "$changelog_version" = "$version-1" ] &&
    ok "packaging/debian/changelog's latest entry is $version-1" ||
    fail "packaging/debian/changelog's latest entry is $changelog_version, the package is $version-1: add an entry"
zcat "$root/usr/share/doc/lanrage-relay/changelog.Debian.gz" | cmp -s - packaging/debian/changelog &&
    ok "changelog.Debian.gz is packaging/debian/changelog" || fail "changelog.Debian.gz differs from packaging/debian/changelog"

# --- conffiles and maintainer scripts -----------------------------------------
if [ "$(cat "$control/conffiles" 2>/dev/null)" = /etc/lanrage/relay.yaml ]; then
    ok "conffiles: /etc/lanrage/relay.yaml"
else
    fail "conffiles is '$(cat "$control/conffiles" 2>/dev/null)', expected /etc/lanrage/relay.yaml"
fi
for script in postinst prerm postrm; do
    f=$control/$script
    if [ ! -f "$f" ]; then
        fail "no $script"
        continue
    fi
    [ "$(stat -c %a "$f")" = 755 ] && ok "$script is mode 0755" || fail "$script is mode $(stat -c %a "$f")"
    sh -n "$f" && ok "$script parses (sh -n)" || fail "$script has a syntax error"
    grep -q '#DEBHELPER#' "$f" && fail "$script still has #DEBHELPER#"
    true
done
has() { # script fixed-string what
    if grep -qF -- "$2" "$control/$1"; then ok "$1: $3"; else fail "$1 lacks $3 ('$2')"; fi
}
has postinst 'raise_sysctl 30-lanrage-relay.conf /proc/sys' "the sysctl step"
has postinst 'systemd-sysusers ${DPKG_ROOT:+--root="$DPKG_ROOT"} lanrage-relay.conf' "user creation"
has postinst 'systemd-tmpfiles --create lanrage-relay.conf' "state directory creation"
has postinst 'deb-systemd-helper enable lanrage-relay.service' "enable on install"
has postinst 'deb-systemd-invoke $_dh_action lanrage-relay.service' "start, or restart after an upgrade"
has prerm 'deb-systemd-invoke stop lanrage-relay.service' "stop on removal"
has postrm 'deb-systemd-helper purge lanrage-relay.service' "forget the unit on purge"
has postrm 'rm -rf "${DPKG_ROOT:-}/var/lib/lanrage-relay"' "delete the state on purge"
# Order in the postinst: the buffers are raised, and the user and its state
# directory exist, before the service starts.
line_of() { grep -nF -- "$1" "$control/postinst" | grep -v '^[0-9]*:[[:space:]]*#' | sed -n 1p | cut -d: -f1; }
l_sysctl=$(line_of 'raise_sysctl 30-lanrage-relay.conf')
l_user=$(line_of 'systemd-sysusers ')
l_state=$(line_of 'systemd-tmpfiles --create')
l_start=$(line_of 'deb-systemd-invoke ')
if [ -n "$l_sysctl" ] && [ -n "$l_user" ] && [ -n "$l_state" ] && [ -n "$l_start" ] &&
    [ "$l_sysctl" -lt "$l_user" ] && [ "$l_user" -lt "$l_state" ] && [ "$l_state" -lt "$l_start" ]; then
    ok "postinst order: sysctl, user, state directory, start"
else
    fail "postinst order (lines): sysctl $l_sysctl, user $l_user, state $l_state, start $l_start"
fi

# --- the unit -----------------------------------------------------------------
unit=$root/usr/lib/systemd/system/lanrage-relay.service
for line in 'ExecStart=/usr/bin/lanrage-relay --config /etc/lanrage/relay.yaml' \
    'User=lanrage-relay' 'StateDirectory=lanrage-relay' 'MemoryMax=' 'TasksMax='; do
    grep -q "^$line" "$unit" && ok "unit: $line" || fail "unit lacks '$line'"
done
# systemd-analyze verify: every directive known and valid, and ExecStart=
# executable. On a copy whose ExecStart= points at the extracted binary, so
# the host's /usr/bin is not involved.
sed "s|^ExecStart=/usr/bin/lanrage-relay |ExecStart=$root/usr/bin/lanrage-relay |" "$unit" \
    >"$work/lanrage-relay.service"
if verify=$(systemd-analyze verify "$work/lanrage-relay.service" 2>&1 |
    grep -v 'running with root privileges is not recommended'); [ -z "$verify" ]; then
    ok "systemd-analyze verify: no complaints"
else
    fail "systemd-analyze verify: $verify"
fi

# The hardening docs/operations.md describes ("about 1.4, OK"); fail if it
# got noticeably weaker.
exposure=$(systemd-analyze security --offline=true "$unit" 2>/dev/null |
    sed -n 's/.*Overall exposure level for lanrage-relay.service: \([0-9.]*\).*/\1/p')
if [ -n "$exposure" ] && awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }'; then
    ok "systemd-analyze security: exposure $exposure (at most 2.0)"
else
    fail "systemd-analyze security: exposure '$exposure', expected at most 2.0"
fi

# --- sysusers.d and tmpfiles.d, applied to a throwaway root ----------------------
fake=$work/fake-root
mkdir -p "$fake/etc"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$fake/etc/passwd"
printf 'root:x:0:\n' >"$fake/etc/group"
: >"$fake/etc/shadow"
: >"$fake/etc/gshadow"
systemd-sysusers --root="$fake" "$root/usr/lib/sysusers.d/lanrage-relay.conf" >/dev/null 2>&1 ||
    fail "systemd-sysusers rejected the sysusers.d file"
user_line=$(grep '^lanrage-relay:' "$fake/etc/passwd" || true)
uid=$(cut -d: -f3 <<<"$user_line")
gid=$(cut -d: -f4 <<<"$user_line")
if [ -n "$user_line" ] && [ "$uid" -lt 1000 ] &&
    [ "$(cut -d: -f6- <<<"$user_line")" = /var/lib/lanrage-relay:/usr/sbin/nologin ] &&
    grep -q "^lanrage-relay:x:$gid:" "$fake/etc/group"; then
    ok "sysusers: system user lanrage-relay ($uid), its own group, home /var/lib/lanrage-relay, no shell"
else
    fail "sysusers made '$user_line'"
fi
mkdir -p "$fake/usr/lib/tmpfiles.d"
cp "$root/usr/lib/tmpfiles.d/lanrage-relay.conf" "$fake/usr/lib/tmpfiles.d/"
systemd-tmpfiles --root="$fake" --create lanrage-relay.conf >/dev/null 2>&1 ||
    fail "systemd-tmpfiles --create failed"
state=$fake/var/lib/lanrage-relay
if [ "$(stat -c '%a %u %g' "$state" 2>/dev/null)" = "700 $uid $gid" ]; then
    ok "tmpfiles: /var/lib/lanrage-relay is 0700 lanrage-relay:lanrage-relay"
else
    fail "tmpfiles made '$(stat -c '%a %u %g' "$state" 2>&1)', expected '700 $uid $gid'"
fi

# --- the postinst's sysctl step, against a fake /proc/sys ----------------------
# The function as shipped, cut out of the package's postinst.
sed -n '/^raise_sysctl() {$/,/^}$/p' "$control/postinst" >"$work/raise_sysctl.sh"
grep -q '^}$' "$work/raise_sysctl.sh" || fail "cannot find raise_sysctl in the postinst"
proc=$work/proc-sys
vendor=$work/usr-lib-sysctl.d
admin=$work/etc-sysctl.d
mkdir -p "$proc/net/core" "$vendor" "$admin"
cp "$root/usr/lib/sysctl.d/30-lanrage-relay.conf" "$vendor/"
run_sysctl() {
    sh -c '. "$1"; raise_sysctl 30-lanrage-relay.conf "$2" "$3" "$4"' sh \
        "$work/raise_sysctl.sh" "$proc" "$admin" "$vendor" 2>"$work/sysctl.err"
}
values() { echo "$(cat "$proc/net/core/rmem_max") $(cat "$proc/net/core/wmem_max")"; }
echo 212992 >"$proc/net/core/rmem_max"
echo 212992 >"$proc/net/core/wmem_max"
run_sysctl && [ "$(values)" = "4194304 4194304" ] &&
    ok "sysctl: raises 212992 to 4194304" || fail "sysctl: got '$(values)' from 212992"
echo 16777216 >"$proc/net/core/rmem_max"
echo 1048576 >"$proc/net/core/wmem_max"
run_sysctl && [ "$(values)" = "16777216 4194304" ] &&
    ok "sysctl: keeps a higher value, raises a lower one" || fail "sysctl: got '$(values)' from 16777216 1048576"
printf 'net.core.rmem_max = 8388608\n' >"$admin/30-lanrage-relay.conf"
echo 212992 >"$proc/net/core/rmem_max"
echo 212992 >"$proc/net/core/wmem_max"
run_sysctl && [ "$(values)" = "8388608 212992" ] &&
    ok "sysctl: an override in /etc/sysctl.d takes the file's place" || fail "sysctl: got '$(values)' with an override"
rm "$admin/30-lanrage-relay.conf"
# A value that can't be written (as in a container's read-only /proc/sys): a
# real sysctl that is read-only even for root, with a value below 4 MiB.
ro=/proc/sys/kernel/random/entropy_avail
if [ -r "$ro" ] && [ ! -w "$ro" ]; then
    rm "$proc/net/core/rmem_max"
    ln -s "$ro" "$proc/net/core/rmem_max"
    echo 212992 >"$proc/net/core/wmem_max"
    if run_sysctl && grep -q 'cannot raise net.core.rmem_max' "$work/sysctl.err" &&
        [ "$(cat "$proc/net/core/wmem_max")" = 4194304 ]; then
        ok "sysctl: a value it can't write is reported, not fatal, and the others are still raised"
    else
        fail "sysctl with a read-only value: status, messages: $(cat "$work/sysctl.err")"
    fi
else
    echo "skip: read-only sysctl case ($ro is missing or writable)"
fi

# --- the binary -----------------------------------------------------------------
bin=$root/usr/bin/lanrage-relay
kind=$(file -b "$bin")
case "$kind" in
*"dynamically linked"*", stripped"*) ok "binary: $kind" ;;
*) fail "binary is not a stripped, dynamically linked executable: $kind" ;;
esac
if [ "$("$bin" --version)" = "lanrage-relay $version" ]; then
    ok "--version: lanrage-relay $version"
else
    fail "--version printed '$("$bin" --version 2>&1)'"
fi
if out=$("$bin" check-config --config "$root/etc/lanrage/relay.yaml" 2>&1); then
    ok "check-config accepts the packaged /etc/lanrage/relay.yaml"
else
    fail "check-config on the packaged config: $out"
fi
key=$("$bin" keygen)
"$bin" pubkey <<<"$key" >/dev/null && ok "keygen | pubkey" || fail "keygen | pubkey"

# --- lintian --------------------------------------------------------------------
if command -v lintian >/dev/null 2>&1; then
    echo "== lintian (errors fail the check; warnings and info are printed)"
    if lintian --fail-on error --info "$deb"; then
        ok "lintian: no errors"
    else
        fail "lintian reported errors"
    fi
else
    echo "skip: lintian is not installed (apt-get install lintian)"
fi

if [ "$failures" -ne 0 ]; then
    echo "$failures check(s) failed for $deb" >&2
    exit 1
fi
echo "all checks passed for $deb"
