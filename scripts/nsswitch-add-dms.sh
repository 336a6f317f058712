#!/bin/bash
# Adds the "dms" source after "files" (or at the end) on the passwd and group lines of an
# nsswitch.conf, once; leaves every other line alone. usage: nsswitch-add-dms.sh [FILE]
# (default /etc/nsswitch.conf; a backup FILE.dms-orig is kept on the first change).
set -euo pipefail
f=${1:-/etc/nsswitch.conf}
[ -f "$f" ] || { echo "nsswitch-add-dms: $f: no such file" >&2; exit 1; }
tmp=$(mktemp "$f.XXXXXX")
trap 'rm -f "$tmp"' EXIT
awk '
/^[ \t]*(passwd|group)[ \t]*:/ {
	split($0, parts, "#"); line = parts[1]
	if (line ~ /[ \t:]dms([ \t\[]|$)/) { print; next }
	if (line ~ /[ \t:]files([ \t\[]|$)/) { sub(/files/, "files dms", line) } else { sub(/[ \t]*$/, " dms", line) }
	print line; next
}
{ print }' "$f" >"$tmp"
if cmp -s "$f" "$tmp"; then exit 0; fi
[ -e "$f.dms-orig" ] || cp -p "$f" "$f.dms-orig"
chmod --reference="$f" "$tmp"
mv "$tmp" "$f"
trap - EXIT
