#!/usr/bin/env bash
# Builds the Debian packages (scripts/package.sh) and installs them into a
# scratch root with dpkg (--root, maintainer scripts run without chroot with
# DPKG_ROOT set, as dpkg documents), then checks: the files and their modes,
# the conffiles, the coremesh system user and the state directories the
# postinst creates, the installed units (settings, and `systemd-analyze
# verify` on them), that the installed binaries run (`--check` on the
# example config), that a reinstall (upgrade path) is idempotent, and that
# removal keeps conffiles and state. Needs root (dpkg, chown); without root
# it skips, except under CI (CI=true), where it fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

under_ci() {
    case "${CI:-}" in "" | 0 | false | FALSE | False) return 1 ;; *) return 0 ;; esac
}
skip() {
    if under_ci; then
        echo "test-package: FAIL: $1 (CI=true: nothing is skipped)" >&2
        exit 1
    fi
    echo "test-package: SKIPPED: $1"
    exit 0
}

[ "$(id -u)" -eq 0 ] || skip "needs root (dpkg --root and chown in the postinst)"
for tool in dpkg dpkg-deb; do
    command -v "$tool" >/dev/null 2>&1 || skip "$tool not installed"
done

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
export CARGO_TARGET_DIR="$TARGET_DIR"

rm -f "$TARGET_DIR"/debian/coremesh-proxy_*.deb "$TARGET_DIR"/debian/coremesh-control_*.deb
bash "$ROOT/scripts/package.sh"
PROXY_DEB=$(ls "$TARGET_DIR"/debian/coremesh-proxy_*.deb)
CONTROL_DEB=$(ls "$TARGET_DIR"/debian/coremesh-control_*.deb)

FAILS=0
PASSES=0
ok() { PASSES=$((PASSES + 1)); echo "ok   $1"; }
bad() { FAILS=$((FAILS + 1)); echo "FAIL $1" >&2; }
check() { # check DESCRIPTION COMMAND...
    local what="$1"
    shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}

# --- package metadata ---------------------------------------------------
for deb in "$PROXY_DEB" "$CONTROL_DEB"; do
    name=$(dpkg-deb --field "$deb" Package)
    check "$name: Depends names passwd (useradd in postinst)" \
        grep -q 'passwd' <<<"$(dpkg-deb --field "$deb" Depends)"
    check "$name: has postinst, prerm, postrm" \
        bash -c "dpkg-deb --ctrl-tarfile '$deb' | tar -t | grep -q postinst && dpkg-deb --ctrl-tarfile '$deb' | tar -t | grep -q prerm && dpkg-deb --ctrl-tarfile '$deb' | tar -t | grep -q postrm"
done
check "coremesh-proxy: conffile /etc/coremesh/example.toml" \
    bash -c "dpkg-deb --ctrl-tarfile '$PROXY_DEB' | tar -xO ./conffiles | grep -qx /etc/coremesh/example.toml"
check "coremesh-control: conffile /etc/coremesh/control.env" \
    bash -c "dpkg-deb --ctrl-tarfile '$CONTROL_DEB' | tar -xO ./conffiles | grep -qx /etc/coremesh/control.env"

# --- a scratch root with an empty dpkg database and a base passwd ------------
SCRATCH=$(mktemp -d /tmp/coremesh-pkg-root.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT
R="$SCRATCH/root"
mkdir -p "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates" "$R/var/lib/dpkg/triggers" "$R/etc"
: >"$R/var/lib/dpkg/status"
: >"$R/var/lib/dpkg/available"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\n' >"$R/etc/group"
printf 'root:*:19000:0:99999:7:::\n' >"$R/etc/shadow"
printf 'root:*::\n' >"$R/etc/gshadow"
chmod 0640 "$R/etc/shadow" "$R/etc/gshadow"

dpkg_root() {
    # --force-depends: the scratch root has no libc6 or passwd packages;
    # the maintainer scripts use the host's tools on $DPKG_ROOT's files.
    dpkg --root="$R" --force-script-chrootless --force-depends --force-not-root \
        --log=/dev/null "$@" </dev/null
}

install_both() {
    if dpkg_root -i "$PROXY_DEB" "$CONTROL_DEB" >"$SCRATCH/dpkg.log" 2>&1; then
        ok "$1"
    else
        bad "$1"
        cat "$SCRATCH/dpkg.log" >&2
    fi
}
install_both "dpkg -i both packages into the scratch root"

mode_of() { stat -c '%a' "$1" 2>/dev/null || echo missing; }
owner_of() { stat -c '%U:%G' "$1" 2>/dev/null || echo missing; }
expect_mode() { # expect_mode PATH MODE
    local got
    got=$(mode_of "$R$1")
    if [ "$got" = "$2" ]; then ok "$1 mode $2"; else bad "$1 mode: want $2, got $got"; fi
}

# --- files and modes --------------------------------------------------------
expect_mode /usr/bin/coremesh-proxy 755
expect_mode /usr/bin/coremesh-control 755
expect_mode /usr/bin/meshctl 755
expect_mode /lib/systemd/system/coremesh-proxy@.service 644
expect_mode /lib/systemd/system/coremesh-control.service 644
expect_mode /etc/coremesh/example.toml 644
expect_mode /etc/coremesh/control.env 644
check "binaries are owned by root" \
    test "$(owner_of "$R/usr/bin/coremesh-proxy")" = root:root -a "$(owner_of "$R/usr/bin/meshctl")" = root:root

# --- the coremesh user and the state directories ----------------------------------
USER_LINE=$(grep '^coremesh:' "$R/etc/passwd" || true)
check "postinst created the coremesh user in the root's /etc/passwd" test -n "$USER_LINE"
UID_=$(cut -d: -f3 <<<"$USER_LINE")
GID_=$(awk -F: '$1 == "coremesh" { print $3 }' "$R/etc/group")
check "coremesh is a system user (uid $UID_ < 1000) with no login shell" \
    bash -c "[ -n '$UID_' ] && [ '$UID_' -lt 1000 ] && [ '$(cut -d: -f7 <<<"$USER_LINE")' = /usr/sbin/nologin ]"
check "coremesh group exists" test -n "$GID_"
for dir in /var/lib/coremesh-proxy:750 /var/lib/coremesh-control:700; do
    path=${dir%%:*}
    expect_mode "$path" "${dir##*:}"
    check "$path is owned by coremesh ($UID_:$GID_)" \
        test "$(stat -c '%u:%g' "$R$path" 2>/dev/null)" = "$UID_:$GID_"
done

# --- the installed units ---------------------------------------------------
PU="$R/lib/systemd/system/coremesh-proxy@.service"
CU="$R/lib/systemd/system/coremesh-control.service"
for line in Type=notify NotifyAccess=main WatchdogSec=30s Restart=on-failure \
    'ExecReload=/bin/kill -HUP $MAINPID' 'ExecStart=/usr/bin/coremesh-proxy --config /etc/coremesh/%i.toml' \
    NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes PrivateTmp=yes User=coremesh \
    StateDirectory=coremesh-proxy/%i RuntimeDirectory=coremesh-proxy/%i LimitNOFILE=1048576 \
    'AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE' \
    'CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE'; do
    check "coremesh-proxy@.service: $line" grep -qxF "$line" "$PU"
done
for line in Type=notify NotifyAccess=main WatchdogSec=30s Restart=on-failure \
    NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes PrivateTmp=yes User=coremesh \
    StateDirectory=coremesh-control RuntimeDirectory=coremesh-control \
    'CapabilityBoundingSet=' 'AmbientCapabilities=' \
    'ExecStart=/usr/bin/coremesh-control --data-dir /var/lib/coremesh-control $COREMESH_CONTROL_OPTS'; do
    check "coremesh-control.service: $line" grep -qxF "$line" "$CU"
done
# Exactly these capabilities, nowhere else granted.
check "no other capability is named in the units" \
    bash -c "! grep -ho 'CAP_[A-Z_]*' '$PU' '$CU' | grep -vxE 'CAP_NET_ADMIN|CAP_NET_BIND_SERVICE' | grep -q ."

if command -v systemd-analyze >/dev/null 2>&1; then
    # verify wants the ExecStart programs: the installed units, pointed at
    # the binaries installed in the scratch root.
    V="$SCRATCH/verify"
    mkdir -p "$V"
    sed "s|/usr/bin/|$R/usr/bin/|g" "$PU" >"$V/coremesh-proxy@api.service"
    sed "s|/usr/bin/|$R/usr/bin/|g" "$CU" >"$V/coremesh-control.service"
    if out=$(systemd-analyze verify "$V/coremesh-proxy@api.service" "$V/coremesh-control.service" 2>&1) &&
        ! grep -q coremesh <<<"$out"; then
        ok "systemd-analyze verify on the installed units"
    else
        bad "systemd-analyze verify on the installed units"
        echo "$out" >&2
    fi
elif under_ci; then
    bad "systemd-analyze is missing under CI (scripts/install-deps.sh installs it)"
else
    echo "test-package: SKIPPED systemd-analyze verify: not installed"
fi

# --- the installed binaries run -----------------------------------------------
check "installed coremesh-proxy --check accepts the example config" \
    "$R/usr/bin/coremesh-proxy" --check --config "$R/etc/coremesh/example.toml"
check "installed meshctl runs" bash -c "'$R/usr/bin/meshctl' --version >/dev/null"
check "installed coremesh-control runs" bash -c "'$R/usr/bin/coremesh-control' --version >/dev/null"

# --- reinstall (the upgrade path) is idempotent -----------------------------------
echo "# local edit" >>"$R/etc/coremesh/control.env"
install_both "dpkg -i again over the installed packages"
check "one coremesh user after the reinstall" test "$(grep -c '^coremesh:' "$R/etc/passwd")" = 1
check "a changed conffile is kept on reinstall" grep -qx '# local edit' "$R/etc/coremesh/control.env"

# --- removal keeps conffiles and state ----------------------------------------
if dpkg_root -r coremesh-proxy coremesh-control >"$SCRATCH/dpkg.log" 2>&1; then
    ok "dpkg -r both packages"
else
    bad "dpkg -r both packages"
    cat "$SCRATCH/dpkg.log" >&2
fi
check "binaries are gone after removal" test ! -e "$R/usr/bin/coremesh-proxy" -a ! -e "$R/usr/bin/meshctl"
check "units are gone after removal" test ! -e "$PU" -a ! -e "$CU"
check "conffiles stay after removal (not purge)" test -e "$R/etc/coremesh/example.toml" -a -e "$R/etc/coremesh/control.env"
check "state directories stay after removal" test -d "$R/var/lib/coremesh-proxy" -a -d "$R/var/lib/coremesh-control"

echo
echo "test-package: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
