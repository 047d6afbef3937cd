# Point PREFIX/current at versions/VERSION unless a newer version is current; the old current
# becomes PREFIX/previous. Needs PREFIX, VERSION and newer() (true if $1 is newer than $2).
mkdir -p "$PREFIX/state" "$PREFIX/config" "$PREFIX/log"
chmod 0700 "$PREFIX/state"  # task output and keys; the agent makes its files 0600 on start
current=""
if [ -L "$PREFIX/current" ] && [ -d "$PREFIX/current/" ]; then
    current=$(basename "$(readlink "$PREFIX/current")")
fi
if [ -z "$current" ] || newer "$VERSION" "$current"; then
    if [ -n "$current" ] && [ "$current" != "$VERSION" ]; then
        ln -sfn "versions/$current" "$PREFIX/.previous.tmp"
        mv -Tf "$PREFIX/.previous.tmp" "$PREFIX/previous"
    fi
    ln -sfn "versions/$VERSION" "$PREFIX/.current.tmp"
    mv -Tf "$PREFIX/.current.tmp" "$PREFIX/current"
fi
# a previous whose files are gone (a package-manager upgrade removed them) is no fallback
if [ -L "$PREFIX/previous" ] && { [ ! -d "$PREFIX/previous/" ] || [ "$(readlink "$PREFIX/previous")" = "$(readlink "$PREFIX/current")" ]; }; then
    rm -f "$PREFIX/previous"
fi
