"""Content digests of files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, streamed in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Verified streaming: a tar.gz target's signed metadata also lists the sha256 of each PIECE bytes,
# so a client can unpack every piece as soon as it is checked, while the rest still downloads.
PIECE = 4 << 20


def piece_sha256s(path: str | os.PathLike[str], piece: int = PIECE) -> list[str]:
    """Hex sha256 of each `piece`-byte slice of a file (the last one may be shorter)."""
    digests = []
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(piece), b""):
            digests.append(hashlib.sha256(chunk).hexdigest())
    return digests


class PieceGate:
    """Checks a byte stream piece by piece against signed digests and hands on checked bytes.

    `feed` takes the stream from its start (again after `restart`, e.g. on another mirror);
    bytes reach `deliver` once the piece holding them matched, in order, each byte once even when
    the stream is fed again. A piece that does not match stops delivery until the next restart
    (the download's whole-file check then fails and picks another mirror).
    """

    def __init__(
        self, piece: int, digests: list[str], length: int, deliver: Callable[[bytes], None]
    ):
        self.piece = piece
        self.digests = digests
        self.length = length
        self.deliver = deliver
        self.delivered = 0  # bytes handed on, ever
        self.restart()

    def restart(self) -> None:
        """The stream starts over from byte 0."""
        self.offset = 0
        self.held = bytearray()
        self.bad = False

    def feed(self, data: bytes) -> None:
        if self.bad:
            return
        self.held += data
        while self.held and not self.bad:
            index = self.offset // self.piece
            want = min(self.piece, self.length - self.offset)
            if want <= 0 or index >= len(self.digests):
                self.bad = True  # more bytes than the signed length
                return
            if len(self.held) < want:
                return
            piece = bytes(self.held[:want])
            del self.held[:want]
            if hashlib.sha256(piece).hexdigest() != self.digests[index]:
                self.bad = True
                return
            end = self.offset + want
            if end > self.delivered:
                self.deliver(piece[self.delivered - self.offset :])
                self.delivered = end
            self.offset = end

    @property
    def complete(self) -> bool:
        """Every byte of the signed length was checked and handed on."""
        return not self.bad and self.delivered == self.length


def valid_pieces(custom: object, length: int) -> tuple[int, list[str]] | None:
    """(piece size, digests) from a target's custom "pieces" field, if well-formed for `length`."""
    if not isinstance(custom, dict):
        return None
    pieces = custom.get("pieces")
    if not isinstance(pieces, dict):
        return None
    size, digests = pieces.get("size"), pieces.get("sha256")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        return None
    if not isinstance(digests, list) or not digests or len(digests) != -(-length // size):
        return None
    if not all(isinstance(d, str) and len(d) == 64 for d in digests):
        return None
    return size, [d.lower() for d in digests]
