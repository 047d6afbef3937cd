#!/bin/sh
# Build a relocatable CPython and its C libraries for one Linux target with a glibc floor.
# Driven by pkgbuild/runtime/builder.py (see docs/runtime.md); usable by hand:
#   build-runtime.sh TARGET SRCDIR WORKDIR OUTDIR
# TARGET is a zig target such as x86_64-linux-gnu.2.17; SRCDIR holds the Debian source
# packages' upstream tarballs; OUTDIR receives the runtime (bin/python3, lib/python3.X).
# Environment: ZIG (zig command, required), JOBS (default 2), BUILD_PYTHON (cross builds).
set -eu

TARGET=$1
SRC=$2
WORK=$3
OUT=$4
JOBS=${JOBS:-2}
: "${ZIG:?ZIG must name the zig compiler}"

ARCH=${TARGET%%-*}
DEPS=$WORK/deps
TOOLS=$WORK/tools
# WORK is kept between runs: a stage that finished has a stamp and is not built again, so a
# build that was killed or failed resumes where it stopped.
rm -rf "$OUT"
mkdir -p "$DEPS/lib" "$DEPS/include" "$TOOLS" "$WORK/build" "$WORK/stamps"

# Wrappers: configure scripts want one word per tool.
for t in cc:cc ar:ar ranlib:ranlib; do
    name=${t%%:*}
    sub=${t#*:}
    extra=""
    if [ "$name" = cc ]; then extra="-target $TARGET"; fi
    printf '#!/bin/sh\nexec %s %s %s "$@"\n' "$ZIG" "$sub" "$extra" > "$TOOLS/z$name"
    chmod +x "$TOOLS/z$name"
done
# CPython's setup.py asks `$CC -print-multiarch` and dpkg-architecture for the host's multiarch
# directories and adds /usr/include/x86_64-linux-gnu: the host's glibc headers then clash with
# zig's glibc 2.17 ones and every extension module fails (an empty lib-dynload). Answer nothing.
printf '#!/bin/sh\ncase " $* " in *" -print-multiarch "*) exit 0 ;; esac\nexec %s cc -target %s "$@"\n' \
    "$ZIG" "$TARGET" > "$TOOLS/zcc"
printf '#!/bin/sh\nexit 1\n' > "$TOOLS/dpkg-architecture"
chmod +x "$TOOLS/zcc" "$TOOLS/dpkg-architecture"
CC=$TOOLS/zcc
AR=$TOOLS/zar
RANLIB=$TOOLS/zranlib
# -O2 also turns off the UBSan that zig cc enables in unoptimised builds. Clang 16+ makes implicit
# declarations errors: older sources (and their configure probes) still rely on them. zig cc
# makes __DATE__/__TIME__ an error (reproducible builds); CPython's build info uses them.
CFLAGS="-O2 -fPIC -fno-sanitize=undefined -Wno-error=implicit-function-declaration -Wno-error=int-conversion -Wno-deprecated-non-prototype -Wno-date-time"
export CC AR RANLIB CFLAGS
export PKG_CONFIG_LIBDIR=$DEPS/lib/pkgconfig PKG_CONFIG_PATH=
HOSTARG=""
if [ "$ARCH" != "$(uname -m)" ]; then HOSTARG="--host=$ARCH-linux-gnu --build=$(uname -m)-linux-gnu"; fi

done_stage() {
    # done_stage NAME: whether NAME finished in an earlier run (then say so)
    if [ -f "$WORK/stamps/$1" ]; then echo "== $1 (done before)"; return 0; fi
    echo "== $1"
    return 1
}

stamp() { touch "$WORK/stamps/$1"; }

unpack() {
    # unpack NAME: extract the upstream tarball of Debian source package NAME afresh, cd into it
    cd "$WORK/build"
    tarball=$(ls "$SRC"/"$1"_*.orig.tar.* | grep -v -- '-www' | grep -v '\.asc$' | head -n 1)
    tar xf "$tarball"
    dir=$(tar tf "$tarball" | head -n 1 | cut -d/ -f1)
    cd "$dir"
}

# Each stage: commands on their own lines, so that `set -e` stops at the first failure.

if ! done_stage zlib; then
unpack zlib
./configure --static --prefix="$DEPS" >/dev/null
make -j"$JOBS" libz.a >/dev/null
make install >/dev/null

stamp zlib
fi

if ! done_stage bzip2; then
unpack bzip2
make -j"$JOBS" CC="$CC" AR="$AR" RANLIB="$RANLIB" CFLAGS="$CFLAGS -D_FILE_OFFSET_BITS=64" libbz2.a >/dev/null
cp libbz2.a "$DEPS/lib/" && cp bzlib.h "$DEPS/include/"

stamp bzip2
fi

if ! done_stage xz; then
unpack xz-utils
./configure $HOSTARG --prefix="$DEPS" --disable-shared --enable-static --with-pic \
    --disable-xz --disable-xzdec --disable-lzmadec --disable-lzmainfo --disable-scripts \
    --disable-doc --disable-nls >/dev/null
make -j"$JOBS" >/dev/null
make install >/dev/null

stamp xz
fi

if ! done_stage libffi; then
unpack libffi
./configure $HOSTARG --prefix="$DEPS" --libdir="$DEPS/lib" --disable-shared --enable-static \
    --with-pic --disable-docs --disable-multi-os-directory --disable-exec-static-tramp >/dev/null
make -j"$JOBS" >/dev/null
make install >/dev/null

stamp libffi
fi

if ! done_stage sqlite3; then
unpack sqlite3
./configure $HOSTARG --prefix="$DEPS" --disable-shared --enable-static --with-pic \
    --disable-tcl --disable-readline --enable-threadsafe >/dev/null
make -j"$JOBS" libsqlite3.la >/dev/null
make install-libLTLIBRARIES install-includeHEADERS install-pkgconfigDATA >/dev/null 2>&1 \
    || { cp .libs/libsqlite3.a "$DEPS/lib/"; cp sqlite3.h sqlite3ext.h "$DEPS/include/"; }

stamp sqlite3
fi

if ! done_stage openssl; then
unpack openssl
case $ARCH in
    x86_64) ossl_target=linux-x86_64 ;;
    aarch64) ossl_target=linux-aarch64 ;;
    *) echo "unsupported arch $ARCH" >&2; exit 2 ;;
esac
./Configure "$ossl_target" no-shared no-tests no-module no-legacy no-comp \
    --prefix="$DEPS" --libdir=lib --openssldir=/etc/ssl CC="$CC" AR="$AR" RANLIB="$RANLIB" >/dev/null
make -j"$JOBS" build_libs >/dev/null
make install_dev >/dev/null

stamp openssl
fi

if ! done_stage cpython; then
unpack python3.11
cat > config.site <<'SITE'
ac_cv_file__dev_ptmx=yes
ac_cv_file__dev_ptc=no
SITE
BUILDPY=""
if [ -n "$HOSTARG" ]; then BUILDPY="--with-build-python=${BUILD_PYTHON:?cross builds need BUILD_PYTHON}"; fi
CONFIG_SITE=$PWD/config.site \
CPPFLAGS="-I$DEPS/include" LDFLAGS="-L$DEPS/lib" LIBS="-lpthread -ldl" \
LIBFFI_CFLAGS="-I$DEPS/include" LIBFFI_LIBS="-L$DEPS/lib -lffi" \
LIBSQLITE3_CFLAGS="-I$DEPS/include" LIBSQLITE3_LIBS="-L$DEPS/lib -lsqlite3 -lm" \
LIBLZMA_CFLAGS="-I$DEPS/include" LIBLZMA_LIBS="-L$DEPS/lib -llzma" \
BZIP2_CFLAGS="-I$DEPS/include" BZIP2_LIBS="-L$DEPS/lib -lbz2" \
ZLIB_CFLAGS="-I$DEPS/include" ZLIB_LIBS="-L$DEPS/lib -lz" \
./configure $HOSTARG $BUILDPY --prefix=/opt/aliyun-assist-runtime --disable-shared \
    --disable-test-modules --without-ensurepip --with-openssl="$DEPS" \
    --without-readline --with-builtin-hashlib-hashes=md5,sha1,sha256,sha512,sha3,blake2 >/dev/null
# setup.py in cross mode even for a native target: no /usr/include or /usr/local of the host
if [ -z "$HOSTARG" ]; then
    export _PYTHON_HOST_PLATFORM="linux-$ARCH"
    export _PYTHON_SYSCONFIGDATA_NAME="_sysconfigdata__linux_$ARCH-linux-gnu"
fi
# _ssl and _hashlib built into the interpreter rather than as two lib-dynload modules that each
# carry a static libcrypto: one copy of OpenSSL in an agent's memory (about 3 MB less RSS).
# makesetup takes the first rule for a module, and Setup.local comes first.
cat > Modules/Setup.local <<'SETUP'
*static*
_ssl _ssl.c $(OPENSSL_INCLUDES) $(OPENSSL_LDFLAGS) -lssl -lcrypto
_hashlib _hashopenssl.c $(OPENSSL_INCLUDES) $(OPENSSL_LDFLAGS) -lcrypto
SETUP
PATH="$TOOLS:$PATH" make -j"$JOBS" >/dev/null
rm -rf "$WORK/install"
PATH="$TOOLS:$PATH" make install DESTDIR="$WORK/install" >/dev/null
stamp cpython
fi
cp -a "$WORK/install/opt/aliyun-assist-runtime" "$OUT"
echo "== done: $OUT"
