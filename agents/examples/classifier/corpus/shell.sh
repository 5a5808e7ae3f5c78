#!/usr/bin/env bash
# Backs up a directory into a dated tarball and keeps the last seven.
set -euo pipefail

src="${1:?usage: backup.sh <dir> [dest]}"
dest="${2:-$HOME/backups}"
stamp="$(date +%Y-%m-%d)"
name="$(basename "$src")-$stamp.tar.gz"

mkdir -p "$dest"
if [[ -e "$dest/$name" ]]; then
    echo "backup: $dest/$name already exists" >&2
    exit 1
fi

echo "backup: archiving $src -> $dest/$name"
tar -czf "$dest/$name" -C "$(dirname "$src")" "$(basename "$src")"

# Keep only the seven newest archives of this directory.
ls -1t "$dest"/"$(basename "$src")"-*.tar.gz | tail -n +8 | while read -r old; do
    echo "backup: removing $old"
    rm -f -- "$old"
done
