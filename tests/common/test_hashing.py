"""common.hashing.file_sha256 streams a file into its hex sha256."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from common.hashing import CHUNK, PieceGate, file_sha256, piece_sha256s, valid_pieces


def test_file_sha256_matches_hashlib_across_chunk_boundaries(tmp_path: Path) -> None:
    data = bytes(range(256)) * (CHUNK // 256 * 2 + 3)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert file_sha256(str(path)) == hashlib.sha256(data).hexdigest()
    assert path.read_bytes() == data


def test_file_sha256_of_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert file_sha256(path) == hashlib.sha256(b"").hexdigest()


# -- signed pieces (verified streaming) ------------------------------------------------------------


def _gate(data: bytes, piece: int, out: list[bytes]) -> PieceGate:
    digests = [hashlib.sha256(data[i : i + piece]).hexdigest() for i in range(0, len(data), piece)]
    return PieceGate(piece, digests, len(data), out.append)


def test_piece_gate_hands_on_checked_bytes_in_order_whatever_the_feed_sizes() -> None:
    data = bytes(range(256)) * 40  # 10240 bytes: pieces of 1000, the last one 240
    out: list[bytes] = []
    gate = _gate(data, 1000, out)
    for start in range(0, len(data), 777):
        gate.feed(data[start : start + 777])
    assert b"".join(out) == data and gate.complete
    assert all(len(piece) <= 1000 for piece in out)


def test_piece_gate_holds_back_a_piece_until_it_is_whole() -> None:
    data = b"a" * 1000 + b"b" * 500
    out: list[bytes] = []
    gate = _gate(data, 1000, out)
    gate.feed(data[:999])
    assert out == []
    gate.feed(data[999:1200])
    assert out == [b"a" * 1000] and not gate.complete


def test_piece_gate_stops_at_a_bad_piece_and_delivers_each_byte_once_after_restart() -> None:
    data = bytes(range(256)) * 12
    out: list[bytes] = []
    gate = _gate(data, 1024, out)
    tampered = data[:1500] + b"X" + data[1501:]
    gate.feed(tampered)
    assert b"".join(out) == data[:1024] and not gate.complete  # nothing of the bad piece
    gate.restart()  # another mirror, from byte 0
    gate.feed(data)
    assert b"".join(out) == data and gate.complete  # the first piece was not handed on twice


def test_piece_gate_refuses_bytes_beyond_the_signed_length() -> None:
    data = b"z" * 2048
    out: list[bytes] = []
    gate = _gate(data, 1024, out)
    gate.feed(data + b"more")
    assert b"".join(out) == data and gate.bad and not gate.complete


def test_piece_sha256s_and_valid_pieces_agree(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"q" * 2500)
    digests = piece_sha256s(path, 1000)
    assert digests == [
        hashlib.sha256(b"q" * 1000).hexdigest(),
        hashlib.sha256(b"q" * 1000).hexdigest(),
        hashlib.sha256(b"q" * 500).hexdigest(),
    ]
    custom = {"pieces": {"size": 1000, "sha256": digests}}
    assert valid_pieces(custom, 2500) == (1000, digests)


@pytest.mark.parametrize(
    "pieces",
    [
        None,
        "x",
        {"size": 0, "sha256": ["0" * 64] * 3},
        {"size": True, "sha256": ["0" * 64] * 3},
        {"size": 1000, "sha256": ["0" * 64] * 2},  # too few for 2500 bytes
        {"size": 1000, "sha256": ["0" * 64] * 4},  # too many
        {"size": 1000, "sha256": ["0" * 63] * 3},
        {"size": 1000, "sha256": "0" * 192},
    ],
)
def test_malformed_pieces_are_ignored_not_trusted(pieces: object) -> None:
    assert valid_pieces({"pieces": pieces}, 2500) is None
