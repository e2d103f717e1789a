#!/usr/bin/env bash
# Make the seed corpus for the fuzz targets from real archives: small trees
# captured by `understudy archive create`, and by GNU tar piped into lzop with
# its various formats, levels and checksums.
#
#   fuzz/make-seeds.sh [OUT]      (default OUT: fuzz/corpus)
#
# writes OUT/lzop_decode/* (lzop files) and OUT/archive_walk/* (the same lzop
# files, plus the bare tar streams, which archive_walk wraps in a sound lzop
# container itself). The binary is $UNDERSTUDY, else the debug build, made if
# missing. Needs tar, lzop and (for one xattr) setfattr if present.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
out=${1:-$here/corpus}
bin=${UNDERSTUDY:-$root/target/x86_64-unknown-linux-gnu/debug/understudy}
if [[ ! -x $bin ]]; then
    (cd "$root" && cargo build --quiet --bin understudy)
fi
mkdir -p "$out/lzop_decode" "$out/archive_walk"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Tree "small": one of everything a capture can meet.
t=$work/small
mkdir -p "$t/dir/sub" "$t/empty-dir"
echo hello >"$t/dir/file"
: >"$t/empty"
ln -s dir/file "$t/link"
ln -s /nonexistent "$t/dangling"
ln "$t/dir/file" "$t/hardlink"
mkfifo "$t/fifo"
long=$(printf 'long-name-%.0s' {1..15})
echo long >"$t/dir/$long"
ln -s "$long/$long" "$t/long-link"
chmod 4755 "$t/dir/file"
touch -d @1700000000 "$t/empty"
if command -v setfattr >/dev/null; then
    setfattr -n user.seed -v value "$t/dir/file" 2>/dev/null || true
fi
# Tree "blocks": more than one 256 KiB lzop block, compressible and not, and a hole.
b=$work/blocks
mkdir -p "$b"
head -c 600000 < <(yes 'understudy fuzz seed') >"$b/text"
# Incompressible but the same every time (an LCG), so the seeds are too.
LC_ALL=C awk 'BEGIN { x = 7; for (i = 0; i < 70000; i++) { x = (x * 1103515245 + 12345) % 2147483648; printf "%c", int(x / 65536) % 256 } }' >"$b/noise"
truncate -s 2M "$b/sparse"
printf 'data in the middle' | dd of="$b/sparse" bs=1 seek=1000000 conv=notrunc status=none
# Tree "empty": nothing but the root.
mkdir -p "$work/empty"
# Fixed times, so that only the lzop headers' own times differ between runs.
find "$t" "$b" "$work/empty" -exec touch -h -d @1700000000 {} +

n=0
lzo() { # NAME: copy $work/out.lzo into both corpora
    cp "$work/out.lzo" "$out/lzop_decode/$1"
    cp "$work/out.lzo" "$out/archive_walk/$1"
    n=$((n + 1))
}
bare() { # NAME: copy $work/out.tar into the walk corpus
    cp "$work/out.tar" "$out/archive_walk/$1"
    n=$((n + 1))
}
for tree in small blocks empty; do
    "$bin" archive create --threads 1 "$work/$tree" "$work/out.lzo" >/dev/null
    lzo "understudy-$tree.tar.lzo"
    lzop -dc "$work/out.lzo" >"$work/out.tar"
    bare "understudy-$tree.tar"
done
# pax headers without the times and process ids that change from run to run.
pax_opt='exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime'
tar -C "$work/small" --format=gnu -cf "$work/out.tar" .
bare "gnutar-gnu.tar"
tar -C "$work/small" --format=pax --pax-option="$pax_opt" -cf "$work/out.tar" .
bare "gnutar-pax.tar"
# ustar has no room for the long names.
tar -C "$work/small" --format=ustar --exclude='*long*' -cf "$work/out.tar" .
bare "gnutar-ustar.tar"
tar -C "$work/blocks" --format=gnu --sparse -cf "$work/out.tar" .
bare "gnutar-gnu-sparse.tar"
for v in 0.0 0.1 1.0; do
    tar -C "$work/blocks" --format=pax --pax-option="$pax_opt" --sparse --sparse-version=$v \
        -cf "$work/out.tar" sparse
    bare "gnutar-pax-sparse-$v.tar"
done
# lzop's own variants of the container: levels (methods 1, 2, 3), checksums,
# a stored file name, and an empty stream.
tar -C "$work/small" -cf "$work/small.tar" .
for opt in -1 -3 -7 -9 --crc32; do
    lzop -c $opt <"$work/small.tar" >"$work/out.lzo"
    lzo "lzop$opt.tar.lzo"
done
tar -C "$work/blocks" -cf "$work/blocks.tar" .
lzop -c -1 <"$work/blocks.tar" >"$work/out.lzo"
lzo "lzop-blocks.tar.lzo"
cp "$work/small.tar" "$work/named.tar"
lzop -f -o "$work/out.lzo" "$work/named.tar"
lzo "lzop-named.tar.lzo"
lzop -c </dev/null >"$work/out.lzo"
lzo "lzop-empty.lzo"
echo "$n seeds in $out" >&2
