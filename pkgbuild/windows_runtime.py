"""The Windows agent's runtime: the official CPython embeddable zip, unpacked into runtime/.

The zip (python-3.X.Y-embed-amd64.zip) holds python.exe, python3XY.dll, the stdlib as
python3XY.zip and a python3XY._pth file that fixes sys.path and ignores PYTHONPATH. We rewrite
that file so that runtime\\Lib\\site-packages (the win_amd64 wheels) and ..\\lib (our code) are
on the path; see docs/runtime.md. Windows itself cannot run here: tests check the layout only.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path, PurePosixPath

from common.errors import UsageError

_PTH = re.compile(r"^python3(\d+)\._pth$")
HINT = "pass the official python-3.11.X-embed-amd64.zip (CPython 3.9 or newer)"


def embeddable_python(names: list[str]) -> str:
    """The CPython version ('3.11') of an embeddable zip, from its python3XY._pth entry."""
    minors = [int(m.group(1)) for n in names if (m := _PTH.match(n))]
    if "python.exe" not in names or len(minors) != 1 or f"python3{minors[0]}.zip" not in names:
        raise UsageError(
            "not a CPython embeddable zip (needs python.exe, python3XY.zip and python3XY._pth)",
            hint=HINT,
        )
    if minors[0] < 9:
        raise UsageError(f"the embeddable zip is CPython 3.{minors[0]}; 3.9+ is needed", hint=HINT)
    return f"3.{minors[0]}"


def render_pth(python: str) -> str:
    """The ._pth: stdlib zip, the runtime dir, its site-packages, the payload's lib/, then site."""
    tag = python.replace(".", "")
    return "\r\n".join(
        [f"python{tag}.zip", ".", r"Lib\site-packages", r"..\lib", "import site", ""]
    )


def unpack_embeddable(archive: Path, dest: Path) -> str:
    """Unpack the embeddable zip into `dest`, rewrite its ._pth; return its version ('3.11')."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [info.filename for info in zf.infolist() if not info.is_dir()]
            python = embeddable_python(names)
            for name in names:
                path = PurePosixPath(name)
                if path.is_absolute() or ".." in path.parts or "\\" in name:
                    raise UsageError(f"{archive.name} has an unsafe entry {name!r}", hint=HINT)
            dest.mkdir(parents=True, exist_ok=True)
            zf.extractall(dest, members=names)
    except zipfile.BadZipFile as exc:
        raise UsageError(f"{archive} is not a zip file", hint=HINT) from exc
    tag = python.replace(".", "")
    (dest / f"python{tag}._pth").write_bytes(render_pth(python).encode("ascii"))
    site_packages(dest).mkdir(parents=True, exist_ok=True)
    return python


def site_packages(runtime: Path) -> Path:
    """Where the win_amd64 wheels go inside the unpacked runtime."""
    return runtime / "Lib" / "site-packages"
