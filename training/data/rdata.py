"""A reader for R's serialization format and lazy-load databases, in pure Python (no R needed).

Enough of the format for data packages: character/integer/double/logical/complex/raw vectors,
lists, pairlists with tags, attributes (so factors and data.frames), symbols, environments and
back-references (REFSXP), and the common ALTREP compact sequences. Closures and byte code are
read as opaque objects where possible; anything else raises `RFormatError` naming the type.

The format is the one written by `serialize()` / `saveRDS()`: a header ("X\\n" for XDR, big-endian;
"A\\n" ASCII and "B\\n" native binary are not supported), version 2 or 3, then items. Each item
starts with a 32-bit flags word: type in the low 8 bits, then is-object (bit 8), has-attributes
(bit 9), has-tag (bit 10) and the "levels" (gp bits, here the string encoding) from bit 12.
Reference: R's src/main/serialize.c.

A lazy-load database (`data/Rdata.rdx` + `.rdb`, what `LazyData: true` installs) is an index
serialized into the .rdx (gzip/zlib-compressed), mapping each object name to (offset, length)
in the .rdb; each .rdb entry is a 4-byte big-endian uncompressed length plus a zlib stream.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# SEXP types (Rinternals.h) and the serializer's pseudo-types (serialize.c).
NILSXP, SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 0, 1, 2, 3, 4, 5, 6
SPECIALSXP, BUILTINSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, CPLXSXP = 7, 8, 9, 10, 13, 14, 15
STRSXP, DOTSXP, VECSXP, EXPRSXP, BCODESXP, EXTPTRSXP, WEAKREFSXP = 16, 17, 19, 20, 21, 22, 23
RAWSXP, S4SXP = 24, 25
REFSXP, NILVALUE_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP, MISSINGARG_SXP = 255, 254, 253, 252, 251
BASENAMESPACE_SXP, NAMESPACESXP, PACKAGESXP, PERSISTSXP = 250, 249, 248, 247
EMPTYENV_SXP, BASEENV_SXP, ATTRLANGSXP, ATTRLISTSXP, ALTREP_SXP = 242, 241, 240, 239, 238

NA_INTEGER = -(2**31)
# CHARSXP encoding flags in the "levels" field
LATIN1_MASK, UTF8_MASK, ASCII_MASK = 1 << 2, 1 << 3, 1 << 6

VECTOR_KINDS = {
    LGLSXP: "logical",
    INTSXP: "integer",
    REALSXP: "double",
    CPLXSXP: "complex",
    STRSXP: "character",
    VECSXP: "list",
    EXPRSXP: "expression",
    RAWSXP: "raw",
}
PAIRLIST_KINDS = {
    LISTSXP: "pairlist",
    LANGSXP: "language",
    CLOSXP: "closure",
    PROMSXP: "promise",
    DOTSXP: "dots",
}


class RFormatError(ValueError):
    """The bytes are not R serialization this reader understands."""


@dataclass
class RObject:
    """One R value: `kind` says what it is, `value` holds the data, `attributes` R's attributes.

    Values: vectors -> Python lists (None for NA); pairlists -> list of (tag | None, value);
    symbols -> str; environments -> dict of bindings; NULL -> None.
    """

    kind: str
    value: Any
    attributes: dict[str, Any] = field(default_factory=dict)

    def attr(self, name: str) -> Any:
        """The simplified value of attribute `name`, or None."""
        value = self.attributes.get(name)
        return simplify(value) if isinstance(value, RObject) else value


NULL = RObject("NULL", None)


class Unserializer:
    """Reads one serialized R object from XDR bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.refs: list[RObject] = []  # REFSXP targets, 1-based in the stream

    def read(self) -> RObject:
        magic = self.data[:2]
        if magic != b"X\n":
            raise RFormatError(f"only XDR serialization is supported, header is {magic!r}")
        self.pos = 2
        version = self.int32()
        self.int32()  # writer's R version
        self.int32()  # minimal reader version
        if version == 3:
            self.bytes(self.int32())  # native encoding name, e.g. "UTF-8"
        elif version != 2:
            raise RFormatError(f"unsupported serialization version {version}")
        return self.item()

    # -- primitives ----------------------------------------------------------------------------
    def bytes(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise RFormatError("unexpected end of data")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int32(self) -> int:
        return int(struct.unpack(">i", self.bytes(4))[0])

    def length(self) -> int:
        n = self.int32()
        if n == -1:  # long vector: two more words
            upper, lower = self.int32(), self.int32()
            n = (upper << 32) + lower
        return n

    def string(self, flags: int) -> str | None:
        n = self.int32()
        if n == -1:
            return None  # NA_character_
        raw = self.bytes(n)
        levels = flags >> 12
        encoding = "latin-1" if levels & LATIN1_MASK else "utf-8"
        return raw.decode(encoding, errors="replace")

    # -- items ---------------------------------------------------------------------------------
    def item(self) -> RObject:
        flags = self.int32()
        kind = flags & 0xFF
        has_attr = bool(flags & (1 << 9))
        has_tag = bool(flags & (1 << 10))

        if kind == REFSXP:
            index = flags >> 8 or self.int32()
            return self.refs[index - 1]
        if kind in (NILVALUE_SXP, NILSXP):
            return NULL
        if kind == EMPTYENV_SXP:
            return RObject("environment", {}, {"name": "R_EmptyEnv"})
        if kind in (GLOBALENV_SXP, BASEENV_SXP, BASENAMESPACE_SXP):
            return RObject("environment", {}, {"name": {253: "R_GlobalEnv"}.get(kind, "base")})
        if kind in (UNBOUNDVALUE_SXP, MISSINGARG_SXP):
            return RObject("marker", None)
        if kind in (PACKAGESXP, NAMESPACESXP, PERSISTSXP):
            self.int32()  # always 0: the names are written as a string vector without its flags
            names = [self.string(self.int32()) for _ in range(self.int32())]
            obj = RObject(
                {PACKAGESXP: "package", NAMESPACESXP: "namespace"}.get(kind, "persistent"), names
            )
            self.refs.append(obj)
            return obj
        if kind == SYMSXP:
            obj = RObject("symbol", self.item().value)
            self.refs.append(obj)
            return obj
        if kind == ENVSXP:
            obj = RObject("environment", {})
            self.refs.append(obj)  # registered before its contents, which may refer back to it
            self.int32()  # locked
            enclosure, frame, hashtab, attrib = self.item(), self.item(), self.item(), self.item()
            obj.value = dict(bindings(frame)) | dict(bindings(hashtab))
            obj.attributes = attributes_of(attrib)
            obj.attributes["enclosure"] = enclosure
            return obj
        if kind in PAIRLIST_KINDS or kind in (ATTRLANGSXP, ATTRLISTSXP):
            if kind in (ATTRLANGSXP, ATTRLISTSXP):
                has_attr, kind = True, LANGSXP if kind == ATTRLANGSXP else LISTSXP
            return self.pairlist(kind, has_attr, has_tag)
        if kind == CHARSXP:
            return RObject("char", self.string(flags))
        if kind in (SPECIALSXP, BUILTINSXP):
            return RObject("builtin", self.bytes(self.int32()).decode())
        if kind == EXTPTRSXP:
            obj = RObject("externalptr", None)
            self.refs.append(obj)
            obj.value = (self.item(), self.item())  # protected value, tag
        elif kind == WEAKREFSXP:
            obj = RObject("weakref", None)
            self.refs.append(obj)
        elif kind == S4SXP:
            obj = RObject("S4", None)
        elif kind == ALTREP_SXP:
            return self.altrep()
        elif kind in VECTOR_KINDS:
            obj = RObject(VECTOR_KINDS[kind], self.vector(kind))
        elif kind == BCODESXP:
            raise RFormatError("byte code (BCODESXP) is not supported")
        else:
            raise RFormatError(f"unsupported SEXP type {kind} at byte {self.pos - 4}")
        if has_attr:
            obj.attributes = attributes_of(self.item())
        return obj

    def pairlist(self, kind: int, has_attr: bool, has_tag: bool) -> RObject:
        """CONS cells: attributes, tag, CAR, then the CDR, read iteratively so long lists are fine."""
        obj = RObject(PAIRLIST_KINDS[kind], [])
        cell_attributes = attributes_of(self.item()) if has_attr else {}
        while True:
            tag = self.item().value if has_tag else None
            obj.value.append((tag, self.item()))
            flags = self.int32()
            cdr_kind = flags & 0xFF
            # The arguments of a call are LISTSXP cells; a closure's or promise's CDR is its body.
            same_list = cdr_kind in (LISTSXP, ATTRLISTSXP) or (cdr_kind == DOTSXP == kind)
            if kind in (CLOSXP, PROMSXP) or not same_list:
                self.pos -= 4  # not another cell of this list: read it as an ordinary item
                tail = self.item()
                if tail is not NULL:
                    obj.value.append((None, tail))
                break
            has_tag = bool(flags & (1 << 10))
            if flags & (1 << 9) or cdr_kind == ATTRLISTSXP:
                self.item()  # attributes on an inner cell are not used by data objects
        obj.attributes = cell_attributes
        return obj

    def vector(self, kind: int) -> list[Any]:
        n = self.length()
        if kind in (LGLSXP, INTSXP):
            values = struct.unpack(f">{n}i", self.bytes(4 * n))
            if kind == LGLSXP:
                return [None if v == NA_INTEGER else bool(v) for v in values]
            return [None if v == NA_INTEGER else v for v in values]
        if kind == REALSXP:
            return list(struct.unpack(f">{n}d", self.bytes(8 * n)))
        if kind == CPLXSXP:
            parts = struct.unpack(f">{2 * n}d", self.bytes(16 * n))
            return [complex(parts[2 * i], parts[2 * i + 1]) for i in range(n)]
        if kind == RAWSXP:
            return list(self.bytes(n))
        if kind == STRSXP:
            out = []
            for _ in range(n):
                flags = self.int32()
                if flags & 0xFF != CHARSXP:
                    raise RFormatError(f"string vector element has type {flags & 0xFF}")
                out.append(self.string(flags))
            return out
        return [self.item() for _ in range(n)]  # VECSXP, EXPRSXP

    def altrep(self) -> RObject:
        """ALTREP objects are written as (class info, state, attributes); expand the known ones."""
        info, state, attrib = self.item(), self.item(), self.item()
        class_name = info.value[0][1].value if info.kind == "pairlist" else None
        if class_name in ("compact_intseq", "compact_realseq"):
            n, start, step = state.value
            values = [start + i * step for i in range(int(n))]
            obj = RObject("integer" if class_name == "compact_intseq" else "double", values)
            if class_name == "compact_intseq":
                obj.value = [int(v) for v in values]
        elif class_name and class_name.startswith("wrap_"):
            obj = RObject(state.value[0].kind, state.value[0].value)  # state = list(x, meta)
        elif class_name == "deferred_string":
            source = state.value[0][1]  # state = pairlist(original vector, info)
            obj = RObject(
                "character", [None if v is None else format_number(v) for v in source.value]
            )
        else:
            raise RFormatError(f"unsupported ALTREP class {class_name!r}")
        obj.attributes = attributes_of(attrib)
        return obj


def format_number(v: Any) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def bindings(frame: RObject) -> list[tuple[str, RObject]]:
    """(name, value) pairs of an environment frame (a pairlist) or hash table (a list of them)."""
    if frame.kind == "pairlist":
        return [(tag, value) for tag, value in frame.value if tag is not None]
    if frame.kind == "list":
        return [pair for bucket in frame.value for pair in bindings(bucket)]
    return []


def attributes_of(obj: RObject) -> dict[str, Any]:
    return {tag: value for tag, value in obj.value} if obj.kind == "pairlist" else {}


def unserialize(data: bytes) -> RObject:
    """Parse R serialization bytes (as written by `serialize()`, uncompressed)."""
    return Unserializer(data).read()


def decompress(data: bytes) -> bytes:
    """saveRDS output is gzip by default, but bzip2 and xz are possible; plain data passes through."""
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:3] == b"BZh":
        return bz2.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    return data


def read_rds(path: Path) -> RObject:
    """Read an .rds file (saveRDS)."""
    return unserialize(decompress(path.read_bytes()))


def simplify(obj: RObject) -> Any:
    """Plain Python for the shapes data packages use.

    factor -> list of labels; data.frame -> dict column -> list; named list -> dict;
    other vectors -> list; pairlist -> dict (tags) ; NULL -> None.
    """
    if obj is NULL or obj.kind == "NULL":
        return None
    classes = obj.attr("class") or []
    if "factor" in classes:
        levels = obj.attr("levels")
        return [None if code is None else levels[code - 1] for code in obj.value]
    if obj.kind in ("list", "expression"):
        items = [simplify(item) for item in obj.value]
        names = obj.attr("names")
        return dict(zip(names, items, strict=True)) if names else items
    if obj.kind == "pairlist":
        return {tag: simplify(value) for tag, value in obj.value}
    if obj.kind in VECTOR_KINDS.values():
        return obj.value
    if obj.kind in ("symbol", "char"):
        return obj.value
    return obj


class LazyLoadDB:
    """A lazy-load database: `<base>.rdx` (index) + `<base>.rdb` (the objects)."""

    def __init__(self, base: Path) -> None:
        self.rdb = base.with_suffix(".rdb")
        index = simplify(unserialize(decompress(base.with_suffix(".rdx").read_bytes())))
        self.variables: dict[str, list[int]] = index["variables"]
        self.references: dict[str, list[int]] = index["references"] or {}
        compressed = index.get("compressed", [True])  # TRUE = zlib, 2 = bzip2, 3 = xz
        self.compression = int(compressed[0] if isinstance(compressed, list) else compressed)

    def names(self) -> list[str]:
        return list(self.variables)

    def raw_entry(self, offset: int, length: int) -> bytes:
        with self.rdb.open("rb") as f:
            f.seek(offset)
            blob = f.read(length)
        size = struct.unpack(">I", blob[:4])[0]
        if self.compression == 1:
            data = zlib.decompress(blob[4:])
        else:  # 2 = bzip2, 3 = xz: one type byte follows the length ("Z", "2", "X", or "0" = none)
            kind, payload = blob[4:5], blob[5:]
            decompressors: dict[bytes, Callable[[bytes], bytes]] = {
                b"Z": zlib.decompress,
                b"2": bz2.decompress,
                b"X": lzma.decompress,
            }
            data = decompressors[kind](payload) if kind in decompressors else payload
        if len(data) != size:
            raise RFormatError(f"entry at {offset}: {len(data)} bytes, index says {size}")
        return data

    def get(self, name: str) -> RObject:
        """The object bound to `name`."""
        if name not in self.variables:
            raise KeyError(f"{name!r} not in {self.rdb.name}; has {', '.join(self.names())}")
        offset, length = self.variables[name]
        return unserialize(self.raw_entry(offset, length))
