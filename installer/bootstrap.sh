#!/bin/sh
# Aliyun Assist bootstrap: install the agent on a fresh Linux VM from the region's mirror.
#
#   curl -fsSL MIRROR/bootstrap/bootstrap.sh | sh
#   sh bootstrap.sh [--mirror URL] [--channel C] [--method auto|native|tarball] [--version V]
#                   [--sha256 HEX] [--prefix DIR] [--python PY]
#                   [--server URL --activation-id ID [--activation-code -] [--instance-name N]]
#
# One step (image pipelines, cloud-init): with --server and --activation-id the installed agent
#   is registered before it starts. The activation code is a secret: give it in the environment
#   (ALIYUN_ASSIST_ACTIVATION_CODE=... sh bootstrap.sh ..., also under `curl | sh`) or on stdin
#   with --activation-code - (sh bootstrap.sh only: under `curl | sh` stdin is the script). It is
#   handed to `assist-agent register` on a pipe, never on a command line (`ps` shows those).
# native: adds our apt / dnf / yum / zypper repository with the pinned OpenPGP key (its
#   fingerprint is baked in below and checked before the key is trusted) and installs the package
#   with the system's own tool, which verifies every index and package signature itself.
# tarball: downloads NAME-V-linux-ARCH.tar.gz, checks it against the sha256 given with --sha256
#   (take it from a trusted source: `assist-install list --json` on a verified machine, or the
#   release notes), unpacks versions/V into the prefix and points current at it. This shell
#   script cannot check TUF signatures, so it never trusts the mirror's own hash: without
#   --sha256 the tarball path refuses (fail closed), also as the fallback of --method auto.
# Only POSIX sh, curl or wget, tar, sha256sum (or shasum/openssl).
set -eu

MIRROR_URL="${ASSIST_MIRROR_URL:-@MIRROR_URL@}"
GPG_FINGERPRINT="${ASSIST_GPG_FINGERPRINT:-@GPG_FINGERPRINT@}"
CHANNEL="${ASSIST_CHANNEL:-@CHANNEL@}"
METHOD="${ASSIST_METHOD:-auto}"
PREFIX="${ASSIST_PREFIX:-/usr/local/share/aliyun-assist}"
PACKAGE="aliyun-assist"
VERSION="${ASSIST_VERSION:-}"
SHA256="${ASSIST_TARBALL_SHA256:-}"
PYTHON="${ASSIST_PYTHON:-python3}"
SERVER="${ASSIST_SERVER_URL:-}"
ACTIVATION_ID="${ASSIST_ACTIVATION_ID:-}"
ACTIVATION_CODE_FROM=env
INSTANCE_NAME="${ASSIST_INSTANCE_NAME:-}"
KEYRING=/usr/share/keyrings/aliyun-assist-archive-keyring.gpg
RPM_KEY=/etc/pki/rpm-gpg/RPM-GPG-KEY-assist

say() { printf '%s\n' "bootstrap: $*" >&2; }
die() { printf '%s\n' "bootstrap: error: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --mirror) MIRROR_URL="$2"; shift 2 ;;
        --channel) CHANNEL="$2"; shift 2 ;;
        --method) METHOD="$2"; shift 2 ;;
        --version) VERSION="$2"; shift 2 ;;
        --sha256) SHA256="$2"; shift 2 ;;
        --prefix) PREFIX="$2"; shift 2 ;;
        --python) PYTHON="$2"; shift 2 ;;
        --server) SERVER="$2"; shift 2 ;;
        --activation-id) ACTIVATION_ID="$2"; shift 2 ;;
        --activation-code)
            [ "$2" = - ] || die "--activation-code takes only '-' (stdin): a code on the command line shows in ps; or set ALIYUN_ASSIST_ACTIVATION_CODE"
            ACTIVATION_CODE_FROM=stdin; shift 2 ;;
        --instance-name) INSTANCE_NAME="$2"; shift 2 ;;
        -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

# Placeholders left unfilled (the template itself) fall back to defaults or demand an option.
case "$CHANNEL" in @*) CHANNEL=stable ;; esac
case "$MIRROR_URL" in @* | "") die "no mirror URL: pass --mirror URL (or use the region's copy of this script)" ;; esac
case "$GPG_FINGERPRINT" in @* | "") die "no pinned key fingerprint in this script: download it from your mirror's bootstrap/" ;; esac
MIRROR_URL="${MIRROR_URL%/}/"
FPR=$(printf '%s' "$GPG_FINGERPRINT" | tr -d ' ' | tr 'a-f' 'A-F')

[ "$(id -u)" = 0 ] || die "run as root (it installs a system service)"

# The activation code is read now, kept in an unexported variable, and removed from the
# environment so that nothing started below (apt, the agent) inherits it.
ACTIVATION_CODE="${ALIYUN_ASSIST_ACTIVATION_CODE:-}"
unset ALIYUN_ASSIST_ACTIVATION_CODE
if [ -n "$SERVER$ACTIVATION_ID" ]; then
    [ -n "$SERVER" ] && [ -n "$ACTIVATION_ID" ] ||
        die "--server and --activation-id go together (pass both to register now, or neither)"
    if [ "$ACTIVATION_CODE_FROM" = stdin ]; then
        IFS= read -r ACTIVATION_CODE || [ -n "$ACTIVATION_CODE" ] || die "no activation code on stdin"
    fi
    [ -n "$ACTIVATION_CODE" ] ||
        die "no activation code: set ALIYUN_ASSIST_ACTIVATION_CODE, or pass --activation-code - and write it to stdin"
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT INT TERM

# -- transport ---------------------------------------------------------------------------------
if command -v curl >/dev/null 2>&1; then
    fetch() { curl -fsSL --retry 3 --connect-timeout 5 -o "$2" "$MIRROR_URL$1"; }
elif command -v wget >/dev/null 2>&1; then
    fetch() { wget -q -T 10 -t 3 -O "$2" "$MIRROR_URL$1"; }
else
    die "neither curl nor wget is installed"
fi

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then shasum -a 256 "$1" | cut -d' ' -f1
    else openssl dgst -sha256 "$1" | sed 's/.*= *//'
    fi
}

# -- the pinned key ------------------------------------------------------------------------------
# With gpg: the key file must hold exactly one primary key, the pinned one. With only gpgv (a
# minimal Debian): the channel's InRelease must carry a valid signature by the pinned key.
check_key_gpg() {
    fprs=$(gpg --batch --with-colons --show-keys "$1" 2>/dev/null | awk -F: '$1=="pub"{p=1;next} p&&$1=="fpr"{print $10;p=0}')
    [ "$fprs" = "$FPR" ] || die "key from the mirror does not match the pinned fingerprint $FPR (got: ${fprs:-none})"
}

check_key_gpgv() {
    fetch "apt/dists/$CHANNEL/InRelease" "$TMP/InRelease" || die "cannot download apt/dists/$CHANNEL/InRelease"
    status=$(gpgv --status-fd 1 --keyring "$1" "$TMP/InRelease" 2>/dev/null || true)
    printf '%s\n' "$status" | awk '$2=="VALIDSIG"{print $NF}' | grep -qx "$FPR" ||
        die "the mirror's apt index is not signed by the pinned key $FPR"
}

verified_key() { # $1: path under keys/, $2: destination
    fetch "keys/$1" "$TMP/$1" || die "cannot download keys/$1 from $MIRROR_URL"
    if command -v gpg >/dev/null 2>&1; then
        check_key_gpg "$TMP/$1"
    elif command -v gpgv >/dev/null 2>&1 && [ "$1" = archive-keyring.gpg ]; then
        check_key_gpgv "$TMP/$1"
    else
        die "gpg is needed to check the repository key (install gnupg, or use --method tarball --sha256 HEX)"
    fi
    mkdir -p "$(dirname "$2")"
    cp "$TMP/$1" "$2"
    chmod 0644 "$2"
}

# -- native package managers -------------------------------------------------------------------
install_apt() {
    verified_key archive-keyring.gpg "$KEYRING"
    list=/etc/apt/sources.list.d/aliyun-assist.list
    printf 'deb [signed-by=%s] %sapt %s main\n' "$KEYRING" "$MIRROR_URL" "$CHANNEL" >"$list"
    # refresh only our source: other sources may be unreachable from a closed region
    apt-get update -q -o Dir::Etc::sourcelist="$list" -o Dir::Etc::sourceparts=- \
        -o APT::Get::List-Cleanup=0 || die "apt-get update failed for $MIRROR_URL"
    pkg="$PACKAGE"; [ -n "$VERSION" ] && pkg="$PACKAGE=$VERSION"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" || die "apt-get install $pkg failed"
}

write_yum_repo() { # $1: repo file
    cat >"$1" <<EOF
[aliyun-assist]
name=Aliyun Assist ($CHANNEL)
baseurl=${MIRROR_URL}yum/$CHANNEL/
enabled=1
gpgcheck=1
repo_gpgcheck=1
gpgkey=file://$RPM_KEY
EOF
}

install_dnf() { # $1: dnf or yum
    verified_key RPM-GPG-KEY-assist "$RPM_KEY"
    rpm --import "$RPM_KEY"
    write_yum_repo /etc/yum.repos.d/aliyun-assist.repo
    pkg="$PACKAGE"; [ -n "$VERSION" ] && pkg="$PACKAGE-$VERSION"
    "$1" -y --disablerepo='*' --enablerepo=aliyun-assist install "$pkg" || die "$1 install $pkg failed"
}

install_zypper() {
    verified_key RPM-GPG-KEY-assist "$RPM_KEY"
    rpm --import "$RPM_KEY"
    zypper --non-interactive removerepo aliyun-assist >/dev/null 2>&1 || true
    zypper --non-interactive addrepo --gpgcheck "${MIRROR_URL}yum/$CHANNEL/" aliyun-assist
    pkg="$PACKAGE"; [ -n "$VERSION" ] && pkg="$PACKAGE-$VERSION"
    zypper --non-interactive install "$pkg" || die "zypper install $pkg failed"
}

# -- tarball fallback ----------------------------------------------------------------------------
json_field() { # $1: python expression over `d` (the parsed JSON on stdin)
    "$PYTHON" -c "import json,sys; d=json.load(sys.stdin); print($1)"
}

install_tarball() {
    case "$(uname -m)" in x86_64 | amd64) arch=x86_64 ;; aarch64 | arm64) arch=aarch64 ;; *) arch=$(uname -m) ;; esac
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
    # No python3 to read the metadata with (the agent carries its own Python): the pinned
    # --version and --sha256 name the file, and the hash is checked below all the same.
    [ -n "$VERSION" ] && [ -n "$SHA256" ] || die "no python3 here to read the repository metadata: pass --version V and --sha256 HEX (the agent itself needs no python3)"
    pick="$PACKAGE/$VERSION/$PACKAGE-$VERSION-linux-$arch.tar.gz $VERSION $SHA256"
    else
    fetch metadata/timestamp.json "$TMP/ts.json" || die "cannot reach $MIRROR_URL"
    snap=$(json_field 'd["signed"]["meta"]["snapshot.json"]["version"]' <"$TMP/ts.json")
    fetch "metadata/$snap.snapshot.json" "$TMP/snap.json" || die "cannot download snapshot metadata"
    tv=$(json_field 'd["signed"]["meta"]["targets.json"]["version"]' <"$TMP/snap.json")
    fetch "metadata/$tv.targets.json" "$TMP/targets.json" || die "cannot download targets metadata"
    pick=$(VERSION="$VERSION" ARCH="$arch" CHANNEL="$CHANNEL" PACKAGE="$PACKAGE" "$PYTHON" -c '
import json, os, sys
t = json.load(sys.stdin)["signed"]["targets"]
def key(v):
    return [int(p) if p.isdigit() else p for p in v.replace("-", ".").split(".")]
rows = [(k, v) for k, v in t.items() if v.get("custom", {}).get("package") == os.environ["PACKAGE"]
        and v["custom"].get("format") == "tar.gz" and v["custom"].get("arch") == os.environ["ARCH"]
        and os.environ["CHANNEL"] in v["custom"].get("channels", [])
        and (not os.environ["VERSION"] or v["custom"].get("version") == os.environ["VERSION"])]
if not rows:
    sys.exit(1)
path, info = max(rows, key=lambda r: key(r[1]["custom"]["version"]))
print(path, info["custom"]["version"], info["hashes"]["sha256"], info["length"])
' <"$TMP/targets.json") || die "no $PACKAGE tarball for $arch in channel $CHANNEL"
    fi
    set -- $pick
    target=$1 version=$2 meta_sha=$3
    if [ -n "$SHA256" ] && [ "$SHA256" != "$meta_sha" ]; then
        die "the repository's hash for $target differs from --sha256: refusing"
    fi
    [ -n "$SHA256" ] || die "refusing the unsigned tarball path without a pinned hash: pass --sha256 $meta_sha only if a trusted source (release notes, \`assist-install list --json\` on a verified machine) gives that value, or install apt/dnf/yum/zypper and rerun"
    dir=${target%/*} file=${target##*/}
    fetch "targets/$dir/$meta_sha.$file" "$TMP/agent.tar.gz" || die "cannot download $target"
    got=$(sha256_of "$TMP/agent.tar.gz")
    [ "$got" = "$SHA256" ] || die "sha256 mismatch for $target: got $got, expected $SHA256"
    # only versions/V/ may be in the archive; no absolute paths, no '..', no links leaving it
    tar -tzvf "$TMP/agent.tar.gz" | awk -v v="versions/$version/" '
        { name=$6; sub(/^\.\//, "", name) }
        name ~ /^\// || name ~ /(^|\/)\.\.(\/|$)/ { bad=1 }
        name != "versions/" && index(name, v) != 1 { bad=1 }
        $1 ~ /^l/ { t=$8 } $1 ~ /^h/ { t=$9 }
        $1 ~ /^[lh]/ && (t ~ /^\// || t ~ /(^|\/)\.\.(\/|$)/) { bad=1 }
        $1 ~ /^[bcp]/ { bad=1 }
        END { exit bad }' || die "$file has entries outside versions/$version/: refusing"
    mkdir -p "$TMP/unpack"
    tar -xzf "$TMP/agent.tar.gz" -C "$TMP/unpack" --no-same-owner || die "cannot unpack $file"
    mkdir -p "$PREFIX/versions" "$PREFIX/state" "$PREFIX/log" "$PREFIX/config"
    rm -rf "$PREFIX/versions/.staging-$version"
    mv "$TMP/unpack/versions/$version" "$PREFIX/versions/.staging-$version"
    rm -rf "$PREFIX/versions/$version"
    mv "$PREFIX/versions/.staging-$version" "$PREFIX/versions/$version"
    ln -sfn "versions/$version" "$PREFIX/.current.tmp"
    mv -f "$PREFIX/.current.tmp" "$PREFIX/current" 2>/dev/null || { rm -f "$PREFIX/current"; mv "$PREFIX/.current.tmp" "$PREFIX/current"; }
    say "installed $PACKAGE $version into $PREFIX (tarball)"
    register_agent
    start_service
}

# -- one step: register the installed agent -------------------------------------------------------
register_agent() {
    [ -n "$SERVER" ] || return 0
    if [ -f "$PREFIX/state/identity.json" ]; then
        say "already registered ($PREFIX/state/identity.json): keeping that registration"
        return 0
    fi
    set -- register --server "$SERVER" --activation-id "$ACTIVATION_ID" --activation-code - --prefix "$PREFIX"
    [ -z "$INSTANCE_NAME" ] || set -- "$@" --instance-name "$INSTANCE_NAME"
    # printf is a shell builtin: the code goes through a pipe, not through any argv
    instance=$(printf '%s\n' "$ACTIVATION_CODE" | "$PREFIX/current/bin/assist-agent" "$@") ||
        die "installed, but registration with $SERVER failed (see above); register later with: $PREFIX/current/bin/assist-agent register --server URL --activation-id ID (code in ALIYUN_ASSIST_ACTIVATION_CODE)"
    say "registered as $instance with $SERVER"
}

# After a native install the package's scripts may already have started the agent: restart it so
# it runs with the new registration.
restart_service() {
    [ -n "$SERVER" ] && [ -z "${ASSIST_NO_START:-}" ] || return 0
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl restart aliyun-assist.service || say "the agent did not restart; see $PREFIX/log/agent.log"
    elif [ -x /etc/init.d/aliyun-assist ]; then
        /etc/init.d/aliyun-assist restart || say "the agent did not restart; see $PREFIX/log/agent.log"
    fi
}

start_service() {
    share="$PREFIX/current/share"
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        sed "s#/usr/local/share/aliyun-assist#$PREFIX#g" "$share/aliyun-assist.service" >/etc/systemd/system/aliyun-assist.service
        systemctl daemon-reload && systemctl enable --now aliyun-assist.service
    elif [ -d /etc/init.d ]; then
        sed "s#/usr/local/share/aliyun-assist#$PREFIX#g" "$share/aliyun-assist.init" >/etc/init.d/aliyun-assist
        chmod 0755 /etc/init.d/aliyun-assist
        if command -v update-rc.d >/dev/null 2>&1; then update-rc.d aliyun-assist defaults >/dev/null 2>&1 || true
        elif command -v chkconfig >/dev/null 2>&1; then chkconfig --add aliyun-assist || true
        fi
        [ -n "${ASSIST_NO_START:-}" ] || /etc/init.d/aliyun-assist start || say "the agent did not start; see $PREFIX/log/agent.log"
    else
        say "no service manager found: start $PREFIX/current/bin/assist-agent run yourself"
    fi
}

# -- main ------------------------------------------------------------------------------------------
native_tool() {
    for tool in apt-get dnf yum zypper; do
        if command -v "$tool" >/dev/null 2>&1; then echo "$tool"; return 0; fi
    done
    return 1
}

case "$METHOD" in
    auto | native)
        if tool=$(native_tool); then
            say "installing $PACKAGE through $tool from $MIRROR_URL (channel $CHANNEL)"
            case "$tool" in
                apt-get) install_apt ;;
                dnf | yum) install_dnf "$tool" ;;
                zypper) install_zypper ;;
            esac
            say "installed $PACKAGE through $tool"
            register_agent
            restart_service
        elif [ "$METHOD" = native ]; then
            die "no apt-get, dnf, yum or zypper here (use --method tarball)"
        else
            install_tarball
        fi
        ;;
    tarball) install_tarball ;;
    *) die "unknown --method $METHOD (auto, native, tarball)" ;;
esac
