#!/usr/bin/env bash
# The README's flag table and `wcluster serve --help` must name the same
# flags: fails, naming each one that is missing on either side.
# Usage: scripts/check-flags.sh [path/to/wcluster]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/wcluster}
# Only the flag column: `  -h, --help` or `      --addr`; never a
# description line that happens to start with a flag.
help_flags=$("$bin" serve --help | grep -oE '^(  -[a-zA-Z], |      )--[a-z0-9-]+' \
  | grep -oE -- '--[a-z0-9-]+' | grep -vxE -- '--help|--version' | sort -u)
# The first column of the table under "## Flags" (a cell may name several).
readme_flags=$(awk '/^## Flags/ {on=1; next} /^## / {on=0} on && /^\| `--/' README.md \
  | cut -d'|' -f2 | grep -oE -- '--[a-z0-9-]+' | sort -u)
missing_in_readme=$(comm -23 <(echo "$help_flags") <(echo "$readme_flags"))
missing_in_help=$(comm -13 <(echo "$help_flags") <(echo "$readme_flags"))
status=0
if [ -n "$missing_in_readme" ]; then
  echo "check-flags: in \`wcluster serve --help\` but not in README.md's flag table:" >&2
  echo "$missing_in_readme" | sed 's/^/  /' >&2
  status=1
fi
if [ -n "$missing_in_help" ]; then
  echo "check-flags: in README.md's flag table but not in \`wcluster serve --help\`:" >&2
  echo "$missing_in_help" | sed 's/^/  /' >&2
  status=1
fi
[ $status = 0 ] && echo "check-flags: README.md and --help name the same $(echo "$help_flags" | wc -l) flags"
exit $status
