"""Strict extended-XYZ reading: every byte of a file is accounted for, or the error says where it is bad.

ASE's reader stops without a word at a blank line, and a truncated tail used to be dropped with a
warning, so a damaged file went on to train or evaluate on part of its data with exit status 0. Here
a file is first split into frames (count line, comment line, one line per atom, optional VEC lines)
and each frame is then parsed by ASE on its own, so an error names the file, the frame and the byte
where the frame starts. Gzip files are read member by member (the labeller appends one member per
frame), and damage is located by member.

Only the labeller may accept a damaged file, and only one kind of damage: the last frame of its own
output cut short by a kill while it was being appended (`read_own_frames`, `cut_torn_tail`).
"""

from __future__ import annotations

import bisect
import codecs
import io
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from mlsim.data._structure import Structure

__all__ = ["OwnFrames", "cut_torn_tail", "read_extxyz", "read_own_frames", "scan_extxyz"]

_GZIP_MAGIC = b"\x1f\x8b"
_INCOMPLETE = "incomplete"  # _split_frames: the text ends inside a frame
_ENDS_INSIDE = "the file ends inside this frame (truncated, or still being written)"
_COUNT_LINE = re.compile(r"\s*\d*")  # a count line cut short: digits only, maybe none yet
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


@dataclass
class Damage:
    """Where a file stops being clean extxyz: frame number, byte offset and what is wrong."""

    frame: int  # the damaged frame's number (= how many complete frames precede it)
    offset: int  # byte where the damaged frame starts (gzip: where its member starts)
    what: str
    torn: bool = False  # the data ends inside the frame and nothing follows: a write cut short?
    tail: str = ""  # decoded text of the torn part (for the labeller's ownership check)
    text_end: bool = False  # torn only because the text ran out (not a gzip member cut short)
    char: int = 0  # where the damaged frame starts in the decoded text


@dataclass
class Scan:
    """A file split into complete frames (character spans of `text`), and the first damage, if any."""

    path: Path
    gz: bool
    size: int
    text: str
    spans: list[tuple[int, int]]
    damage: Damage | None
    member_chars: list[int] = field(default_factory=list)  # gzip: where each member's text starts
    member_bytes: list[int] = field(default_factory=list)  # gzip: where each member starts on disk

    def offset_of(self, char: int) -> int:
        """Byte offset on disk of text position `char` (gzip: of the member holding it)."""
        if not self.gz:
            return len(self.text[:char].encode())
        k = bisect.bisect_right(self.member_chars, char) - 1
        return self.member_bytes[k] if k >= 0 else 0

    def where(self, frame: int, offset: int) -> str:
        """'PATH: frame K (byte B)': how every error message starts."""
        at = f"gzip member at byte {offset}" if self.gz else f"byte {offset}"
        return f"{self.path}: frame {frame} ({at})"

    def error(self, d: Damage) -> str:
        """The message for damage `d`."""
        return f"{self.where(d.frame, d.offset)}: {d.what}"


def _split_frames(text: str, pos: int = 0) -> tuple[list[tuple[int, int]], int, str | None]:
    """Return (spans of the complete frames, where splitting stopped, why: None at a clean end)."""
    spans: list[tuple[int, int]] = []
    size = len(text)
    while pos < size:
        nl = text.find("\n", pos)
        if nl < 0:
            if not text[pos:].strip():
                return spans, size, None  # trailing blanks
            return spans, pos, _INCOMPLETE
        line = text[pos:nl]
        if not line.strip():  # blank line between frames
            pos = nl + 1
            continue
        head = line.strip()
        if not (head.isascii() and head.isdigit()):
            return spans, pos, f"expected a frame's atom-count line, found {head[:40]!r}"
        end = nl + 1
        for _ in range(int(head) + 1):  # comment line, then one line per atom
            nl = text.find("\n", end)
            if nl < 0:
                return spans, pos, _INCOMPLETE
            end = nl + 1
        for _ in range(3):  # ASE's VEC1..VEC3 lines (lattice vectors after the atoms)
            nl = text.find("\n", end)
            if nl < 0 or not text[end:nl].lstrip().startswith("VEC"):
                break
            end = nl + 1
        spans.append((pos, end))
        pos = end
    return spans, pos, None


def _scan_text(path: Path, raw: bytes) -> Scan:
    """Split an uncompressed file into frames; find the first damage."""
    if raw.startswith(_GZIP_MAGIC):
        d = Damage(0, 0, "this is gzip-compressed data, but the name does not end in .gz")
        return Scan(path, False, len(raw), "", [], d)
    bad: UnicodeDecodeError | None = None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = exc
        text = raw[: exc.start].decode("utf-8")
    scan = Scan(path, False, len(raw), text, [], None)
    spans, stop, reason = _split_frames(text)
    scan.spans = spans
    at_end = bad is not None and bad.reason == "unexpected end of data" and bad.end == len(raw)
    if reason is not None and reason != _INCOMPLETE:
        scan.damage = Damage(len(spans), scan.offset_of(stop), reason, char=stop)
    elif bad is not None and not at_end:
        what = f"invalid byte 0x{raw[bad.start]:02x} at byte {bad.start} (not UTF-8 text)"
        scan.damage = Damage(len(spans), scan.offset_of(stop), what, char=stop)
    elif reason == _INCOMPLETE or at_end:  # the file ends inside a frame (or inside a character)
        scan.damage = Damage(
            len(spans),
            scan.offset_of(stop),
            _ENDS_INSIDE,
            torn=True,
            tail=text[stop:],
            text_end=not at_end,
            char=stop,
        )
    return scan


def _inflate_member(raw: memoryview, pos: int) -> tuple[bytes, int | None, str | None]:
    """Decompress the gzip member at `pos`: (data, end offset or None if cut short, zlib error)."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out: list[bytes] = []
    p, chunk = pos, 4096
    while True:
        # Growing pieces, not raw[pos:]: unused_data copies the rest of the input, and a labelled
        # file has one small member per frame (copying the rest each time would be quadratic).
        piece = raw[p : p + chunk]
        if not len(piece):
            return b"".join(out), None, None
        try:
            out.append(d.decompress(piece))
        except zlib.error as exc:
            return b"".join(out), None, str(exc)
        if d.eof:
            return b"".join(out), p + len(piece) - len(d.unused_data), None
        p += len(piece)
        chunk = min(chunk * 2, 1 << 24)


def _scan_gzip(path: Path, raw: bytes) -> Scan:
    """Split a gzip file (one or more members) into frames; find the first damage."""
    scan = Scan(path, True, len(raw), "", [], None)
    if raw and not raw.startswith(_GZIP_MAGIC):
        scan.damage = Damage(0, 0, "not gzip data, although the name ends in .gz")
        return scan
    view = memoryview(raw)
    decoder = codecs.getincrementaldecoder("utf-8")()
    parts: list[str] = []
    n_chars = pos = 0
    member: tuple[int, str, bool, bytes] | None = None  # (offset, what, torn, partial data)
    while pos < len(raw):
        if raw[pos : pos + 2] != _GZIP_MAGIC[: len(raw) - pos]:
            member = (pos, f"the bytes from {pos} on are not a gzip member", False, b"")
            break
        data, end, err = _inflate_member(view, pos)
        if err is not None:
            member = (pos, f"corrupt gzip member ({err})", False, b"")
            break
        if end is None:
            member = (pos, _ENDS_INSIDE, True, data)
            break
        try:
            piece = decoder.decode(data)
        except UnicodeDecodeError as exc:
            member = (pos, f"not UTF-8 text inside the gzip member ({exc.reason})", False, b"")
            break
        scan.member_chars.append(n_chars)
        scan.member_bytes.append(pos)
        parts.append(piece)
        n_chars += len(piece)
        pos = end
    scan.text = text = "".join(parts)
    spans, stop, reason = _split_frames(text)
    scan.spans = spans
    if reason is not None:
        # Complete members whose text ends inside a frame: not a torn append (one member per frame).
        # Never `torn`: cutting at the member's start could drop complete frames stored with it.
        what = reason if reason != _INCOMPLETE else "the gzip data ends inside this frame"
        d = Damage(len(spans), scan.offset_of(stop), what, char=stop)
        d.text_end = reason == _INCOMPLETE and member is None
        scan.damage = d
    elif member is not None:
        offset, what, torn, data = member
        tail = ""
        if torn:
            try:  # a character cut in two at the very end is part of the tear, not damage
                tail = codecs.getincrementaldecoder("utf-8")().decode(data)
            except UnicodeDecodeError:
                torn, what = False, "not UTF-8 text inside the gzip member"
        scan.damage = Damage(len(spans), offset, what, torn=torn, tail=tail, char=len(text))
    elif decoder.getstate()[0]:
        scan.damage = Damage(len(spans), pos, "the gzip data ends inside a UTF-8 character")
    return scan


def scan_extxyz(path: str | Path) -> Scan:
    """Split an extxyz(.gz) file into complete frames without parsing them; never modifies it."""
    path = Path(path)
    raw = path.read_bytes()
    return _scan_gzip(path, raw) if path.name.lower().endswith(".gz") else _scan_text(path, raw)


def _parse(scan: Scan) -> list[Structure]:
    """Parse every complete frame with ASE; an error names the frame."""
    from ase.io.extxyz import read_xyz

    out = []
    for k, (a, b) in enumerate(scan.spans):
        try:
            atoms = next(read_xyz(io.StringIO(scan.text[a:b]), 0))
            out.append(Structure.from_atoms(atoms))
        except Exception as exc:  # ASE raises many types; say which frame and why
            msg = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            raise ValueError(f"{scan.where(k, scan.offset_of(a))}: cannot parse it: {msg}") from exc
    return out


def read_extxyz(path: str | Path) -> list[Structure]:
    """Read every frame of an extxyz(.gz) file; a damaged, truncated or empty file is an error."""
    scan = scan_extxyz(path)
    d = scan.damage
    if d is not None and d.text_end and not scan.text.endswith("\n"):
        # A last line without its newline is common in hand-written files: accept it when the
        # frame is complete with it (a torn mlsim write is refused by the labeller, not here).
        spans, _, reason = _split_frames(scan.text + "\n", d.char)
        if reason is None and len(spans) == 1:
            scan.spans.extend(spans)
            d = scan.damage = None
    if d is not None:
        raise ValueError(scan.error(d))
    if not scan.spans:
        raise ValueError(f"{scan.path}: empty file: no frames")
    return _parse(scan)


def _looks_like_atom_line(line: str) -> bool:
    parts = line.split()
    return bool(parts) and parts[0].isalpha() and all(_FLOAT.fullmatch(p) for p in parts[1:])


def _torn_frame_prefix(tail: str, after_frames: bool) -> bool:
    """True when `tail` can be the start of one frame mlsim label was appending when it was killed.

    Complete lines must be what `append_frames` writes: a count, a comment line carrying
    label_index, atom lines. With no complete frame before it, the tail itself must show
    label_index, or nothing says the file is mlsim's.
    """
    lines = tail.split("\n")
    if len(lines) == 1:  # only (part of) the count line
        return after_frames and bool(_COUNT_LINE.fullmatch(lines[0]))
    head = lines[0].strip()
    if not (head.isascii() and head.isdigit()):
        return False
    if len(lines) == 2:  # count line, part of the comment line
        return after_frames
    if "label_index=" not in lines[1]:
        return False
    atoms = lines[2:-1]  # complete atom lines (the last element is the cut-off line)
    # At most one frame: a second count or comment line fails the atom-line test.
    return len(atoms) <= int(head) and all(_looks_like_atom_line(x) for x in atoms)


@dataclass
class OwnFrames:
    """The frames of a labeller's own output, and where a torn last frame starts (None: clean)."""

    structures: list[Structure]
    cut: int | None
    size: int


def read_own_frames(path: str | Path) -> OwnFrames:
    """Read an append-only labeller file, accepting only a torn last frame; never modifies it.

    Anything else that is not clean extxyz (a corrupt frame or gzip member anywhere, bytes after
    the damage, a wrong extension, a tail that does not look like mlsim's) is an error naming
    the file, the frame and the byte, and the caller must leave the file alone.
    """
    path = Path(path)
    if not path.exists():
        return OwnFrames([], None, 0)
    scan = scan_extxyz(path)
    d = scan.damage
    leave = (
        "; this is not a last frame cut short while mlsim label appended it, so the file is "
        "left as it is: move it away or choose another output file"
    )
    if d is not None and not (d.torn and _torn_frame_prefix(d.tail, bool(scan.spans))):
        raise ValueError(scan.error(d) + leave)
    try:
        structures = _parse(scan)
    except ValueError as exc:
        raise ValueError(f"{exc}{leave}") from exc
    return OwnFrames(structures, None if d is None else d.offset, scan.size)


def cut_torn_tail(path: str | Path, own: OwnFrames) -> None:
    """Cut the torn last frame `read_own_frames` found off `path`, so appends start on a frame boundary.

    Only for the writer holding the file's lock, after it checked the complete frames are its own.
    """
    if own.cut is None:
        return
    path = Path(path)
    with open(path, "r+b") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size != own.size:  # someone wrote since it was read: cutting could lose their data
            raise ValueError(f"{path} changed while being checked ({own.size} -> {size} bytes)")
        fh.truncate(own.cut)
        fh.flush()
        os.fsync(fh.fileno())
