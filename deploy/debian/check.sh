#!/usr/bin/env bash
# Checks a Debian package built by `cargo deb -p flagstaff-cluster`: its control fields, that
# it holds the files of deploy/ unchanged where the unit and README expect them, that its
# binary runs, and that its postinst is valid shell. Used by scripts/test.sh.
#   bash deploy/debian/check.sh target/flagstaff.deb
set -euo pipefail
deb="$1"
here="$(cd "$(dirname "$0")/.." && pwd)"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
fail() { echo "check.sh: $*" >&2; exit 1; }
info="$(dpkg-deb --info "$deb")"
grep -q '^ Package: flagstaff$' <<<"$info" || fail "not the flagstaff package: $info"
grep -q '^ Depends: .*libstdc++6' <<<"$info" || fail "Depends lacks libstdc++6: $info"
dpkg-deb --extract "$deb" "$root"
dpkg-deb --control "$deb" "$root/DEBIAN"
cmp "$root/lib/systemd/system/flagstaff.service" "$here/flagstaff.service" || fail "unit differs"
cmp "$root/etc/flagstaff/flagstaff.toml" "$here/flagstaff.toml" || fail "config differs"
cmp "$root/etc/flagstaff/flagstaff.env" "$here/flagstaff.env" || fail "env file differs"
[ "$(stat -c %a "$root/etc/flagstaff/flagstaff.env")" = 640 ] || fail "env file not 0640"
grep -qx /etc/flagstaff/flagstaff.env "$root/DEBIAN/conffiles" || fail "env file not a conffile"
grep -qx /etc/flagstaff/flagstaff.toml "$root/DEBIAN/conffiles" || fail "config not a conffile"
# The unit runs /usr/bin/flagstaff: the package's binary, which runs here.
grep -q '^ExecStart=/usr/bin/flagstaff ' "$root/lib/systemd/system/flagstaff.service"
"$root/usr/bin/flagstaff" --version | grep -q '^flagstaff ' || fail "the binary does not run"
sh -n "$root/DEBIAN/postinst" || fail "postinst is not valid shell"
echo "check.sh: $deb is a complete flagstaff package"
