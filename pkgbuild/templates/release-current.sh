# This version is being removed: if current points at it, fall back to previous (when its files
# are still there) or drop the link. Needs PREFIX and VERSION.
if [ -L "$PREFIX/current" ] && [ "$(basename "$(readlink "$PREFIX/current")")" = "$VERSION" ]; then
    if [ -L "$PREFIX/previous" ] && [ -d "$PREFIX/previous/" ] &&
        [ "$(basename "$(readlink "$PREFIX/previous")")" != "$VERSION" ]; then
        ln -sfn "$(readlink "$PREFIX/previous")" "$PREFIX/.current.tmp"
        mv -Tf "$PREFIX/.current.tmp" "$PREFIX/current"
    else
        rm -f "$PREFIX/current"
    fi
    rm -f "$PREFIX/previous"
fi
if [ -L "$PREFIX/previous" ] && [ "$(basename "$(readlink "$PREFIX/previous")")" = "$VERSION" ]; then
    rm -f "$PREFIX/previous"
fi
