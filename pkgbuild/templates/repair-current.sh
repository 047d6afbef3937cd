# After a package's files were removed: a dangling current falls back to previous, else to the
# newest version left on disk; a dangling previous goes. Needs PREFIX.
if [ -L "$PREFIX/current" ] && [ ! -d "$PREFIX/current/" ]; then
    target=""
    if [ -L "$PREFIX/previous" ] && [ -d "$PREFIX/previous/" ]; then
        target=$(readlink "$PREFIX/previous")
    else
        newest=$(ls "$PREFIX/versions" 2>/dev/null | grep -v '^\.' | sort -V | tail -n 1)
        if [ -n "$newest" ] && [ -d "$PREFIX/versions/$newest/bin" ]; then
            target="versions/$newest"
        fi
    fi
    if [ -n "$target" ]; then
        ln -sfn "$target" "$PREFIX/.current.tmp"
        mv -Tf "$PREFIX/.current.tmp" "$PREFIX/current"
    else
        rm -f "$PREFIX/current"
    fi
fi
if [ -L "$PREFIX/previous" ] && { [ ! -d "$PREFIX/previous/" ] || [ "$(readlink "$PREFIX/previous")" = "$(readlink "$PREFIX/current" 2>/dev/null)" ]; }; then
    rm -f "$PREFIX/previous"
fi
rmdir "$PREFIX/versions" 2>/dev/null || true
