"""What an HDF5 object's attributes claim, read from its object header before libhdf5 reads them.

    AttributeClaims(path, size).problem(header_address, name) -> str | None

libhdf5 trusts the sizes an attribute declares: for a variable-length string it allocates (and
zero-fills) the length stored in the attribute's raw data before it finds that the global heap
object is much smaller; h5py allocates the element count of the dataspace before the read. A
23 KB legacy `.h5` with one length bumped made the reader peak at 0.7-4.2 GB (bench/README.md,
Fuzzing). So before an attribute is read, its message is found in the object header and checked:

- its dataspace's element count times the datatype's size must fit in the message's data;
- a variable-length attribute's values (each a length and a global heap id) may claim in all
  no more bytes than the whole file holds, and each must be an object of that size in a
  well-formed global heap collection (what libhdf5 finds out only after allocating).

The parser is bounded (`MAX_HEADER_BYTES` per object, `MAX_CHUNKS` continuation chunks, each
visited once) and reads only what the header says, through `os.pread`. It covers object header
versions 1 and 2 and attribute messages 1-3 stored in the header (what h5py writes by default,
and Keras with it). Attributes it cannot find (dense storage in a fractal heap, a shared
datatype) get no answer (None): libhdf5 reads them as before.
"""

from __future__ import annotations

import os
import struct

SIGNATURE = b"\x89HDF\r\n\x1a\n"
MAX_HEADER_BYTES = 1 << 20  # all chunks of one object header
MAX_CHUNKS = 64
_CONTINUATION, _ATTRIBUTE = 0x10, 0x0C
_VLEN = 9


class _Malformed(Exception):
    pass


class AttributeClaims:
    """The attributes of the objects of one HDF5 file, as their headers declare them (cached
    per header). `problem(addr, name)`: why attribute `name` of the object whose header is at
    `addr` cannot be what it claims, or None (plausible, or not found here)."""

    def __init__(self, path: str, size: int) -> None:
        self._path = path
        self._size = size
        self._fd: int | None = None
        self._base = 0
        self._addr_size = 8
        self._len_size = 8
        self._ok = False
        self._cache: dict[int, dict[str, str | None]] = {}
        self._heaps: dict[int, dict[int, int] | None] = {}  # global heap collections read
        try:
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            self._superblock()
            self._ok = True
        except (OSError, _Malformed, struct.error):
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def problem(self, addr: int, name: str) -> str | None:
        if not self._ok:
            return None
        if addr not in self._cache:
            try:
                self._cache[addr] = self._attributes(addr)
            except (_Malformed, struct.error, OSError, ValueError, OverflowError):
                self._cache[addr] = {}  # libhdf5 will say what is wrong with this header
        return self._cache[addr].get(name)

    # -- the file ------------------------------------------------------------------------------

    def _read(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0 or offset + n > self._size or self._fd is None:
            raise _Malformed(f"{n} bytes at {offset} are past the end of the file")
        data = os.pread(self._fd, n, offset)
        if len(data) != n:
            raise _Malformed("short read")
        return data

    def _superblock(self) -> None:
        offset = 0
        while offset + 64 <= self._size:
            head = self._read(offset, 64)
            if head[:8] == SIGNATURE:
                break
            offset = 512 if offset == 0 else offset * 2
        else:
            raise _Malformed("no superblock")
        version = head[8]
        if version in (0, 1):
            self._addr_size, self._len_size = head[13], head[14]
            base_at = 24 if version == 0 else 28
        elif version in (2, 3):
            self._addr_size, self._len_size = head[9], head[10]
            base_at = 12
        else:
            raise _Malformed(f"superblock version {version}")
        if self._addr_size not in (2, 4, 8) or self._len_size not in (2, 4, 8):
            raise _Malformed("odd address or length size")
        self._base = _uint(head, base_at, self._addr_size)

    # -- object headers -------------------------------------------------------------------------

    def _attributes(self, addr: int) -> dict[str, str | None]:
        """name -> problem (or None) for every attribute message in the header at `addr`."""
        found: dict[str, str | None] = {}
        for kind, data in self._messages(self._base + addr):
            if kind == _ATTRIBUTE:
                parsed = self._attribute(data)
                if parsed is not None:
                    found[parsed[0]] = parsed[1]
        return found

    def _messages(self, at: int) -> list[tuple[int, bytes]]:
        prefix = self._read(at, 16)
        if prefix[:4] == b"OHDR":
            if prefix[4] != 2:
                raise _Malformed("object header version")
            flags, p = prefix[5], 6
            p += 16 if flags & 0x20 else 0
            p += 4 if flags & 0x10 else 0
            width = 1 << (flags & 0x03)
            size = _uint(self._read(at + p, width), 0, width)
            chunks, version, order = [(at + p + width, size)], 2, bool(flags & 0x04)
        elif prefix[0] == 1:
            chunks, version, order = [(at + 16, _uint(prefix, 8, 4))], 1, False
        else:
            raise _Malformed("object header version")
        messages: list[tuple[int, bytes]] = []
        seen: set[int] = set()
        total = 0
        while chunks:
            start, size = chunks.pop(0)
            if start in seen or len(seen) >= MAX_CHUNKS:
                continue
            seen.add(start)
            total += size
            if total > MAX_HEADER_BYTES:
                raise _Malformed("object header too large")
            chunk = self._read(start, size)
            messages.extend(self._chunk_messages(chunk, version, order, chunks))
        return messages

    def _chunk_messages(
        self, chunk: bytes, version: int, order: bool, chunks: list[tuple[int, int]]
    ) -> list[tuple[int, bytes]]:
        out = []
        p = 0
        if version == 2 and chunk[:4] == b"OCHK":
            p, chunk = 4, chunk[:-4]  # a continuation chunk: signature ... checksum
        head = 8 if version == 1 else 4 + (2 if order else 0)
        while p + head <= len(chunk):
            if version == 1:
                kind, size = struct.unpack_from("<HH", chunk, p)
            else:
                kind, size = chunk[p], struct.unpack_from("<H", chunk, p + 1)[0]
            data = chunk[p + head : p + head + size]
            p += head + size
            if len(data) != size:
                break
            if kind == _CONTINUATION:
                offset = _uint(data, 0, self._addr_size)
                length = _uint(data, self._addr_size, self._len_size)
                chunks.append((self._base + offset, length))
            else:
                out.append((kind, data))
        return out

    # -- attribute messages ------------------------------------------------------------------------

    def _attribute(self, d: bytes) -> tuple[str, str | None] | None:
        version = d[0]
        if version not in (1, 2, 3):
            return None
        name_size, dt_size, ds_size = struct.unpack_from("<HHH", d, 2)
        if version > 1 and d[1] & 0x03:
            return None  # a shared datatype or dataspace: described elsewhere
        pad = _pad8 if version == 1 else (lambda n: n)
        p = 8 if version < 3 else 9
        name = d[p : p + name_size].rstrip(b"\0").decode("utf-8", "replace")
        p += pad(name_size)
        dt = d[p : p + dt_size]
        p += pad(dt_size)
        ds = d[p : p + ds_size]
        p += pad(ds_size)
        data = d[p:]
        if len(dt) < 8 or len(ds) < 2:
            return name, None
        count = self._count(ds)
        item = _uint(dt, 4, 4)
        if count is None:
            return name, None
        if count * item > len(data):
            return name, (
                f"attribute {name} declares {count} value(s) of {item} bytes, but its message holds only {len(data)}"
            )
        if dt[0] & 0x0F != _VLEN or len(dt) < 16:
            return name, None
        kind, padding, charset = dt[1] & 0x0F, dt[1] >> 4, dt[2] & 0x0F
        if kind > 1 or padding > 2 or charset > 1:  # libhdf5 crashes (SIGSEGV) on an unknown one
            return name, f"attribute {name} has a variable-length type of unknown kind {kind}/{padding}/{charset}"
        base_size = max(1, _uint(dt, 12, 4))  # the base type's size (1 for a string's characters)
        element = 4 + self._addr_size + 4  # length, global heap collection, object index
        if count * element > len(data):
            return name, f"attribute {name} declares {count} variable-length value(s), but its message holds fewer"
        claimed = 0
        for k in range(count):
            length = _uint(data, k * element, 4)
            collection = _uint(data, k * element + 4, self._addr_size)
            index = _uint(data, k * element + 4 + self._addr_size, 4)
            claimed += length * base_size
            if length == 0 and collection == 0:
                continue  # an empty value: no heap object
            objects = self._collection(collection)
            if objects is None:
                return name, f"attribute {name} refers to a global heap at {collection}, which is not one"
            if objects.get(index) != length * base_size:
                return name, (
                    f"attribute {name} claims a {length * base_size}-byte value as object {index} of the global "
                    f"heap at {collection}, which holds no such object"
                )
        if claimed > self._size:
            return name, (
                f"attribute {name}'s variable-length values claim {claimed} bytes, more than the whole file holds: "
                f"{self._size} bytes"
            )
        return name, None

    def _collection(self, addr: int) -> dict[int, int] | None:
        """Object index -> size of the global heap collection at `addr`, None if there is no
        well-formed one (signature, version, a size within the file, objects within it)."""
        if addr in self._heaps:
            return self._heaps[addr]
        objects: dict[int, int] | None = None
        try:
            at = self._base + addr
            head = self._read(at, 8 + self._len_size)
            size = _uint(head, 8, self._len_size)
            if head[:4] == b"GCOL" and head[4] == 1 and 8 + self._len_size <= size <= self._size - at:
                heap = self._read(at, size)
                objects = {}
                p = obj_head = 8 + self._len_size
                # libhdf5's own walk (H5HG__cache_heap_deserialize), which trusts every size: a
                # free-space object of size 0 makes it loop forever, one past the end reads
                # outside the collection. Objects must tile the collection exactly.
                while p + obj_head <= size:
                    index = _uint(heap, p, 2)
                    length = _uint(heap, p + 8, self._len_size)
                    need = obj_head + _pad8(length) if index else length
                    if need <= 0 or p + need > size:
                        objects = None
                        break
                    if index:
                        objects[index] = length
                    p += need
        except _Malformed:
            objects = None
        self._heaps[addr] = objects
        return objects

    def _count(self, ds: bytes) -> int | None:
        version, rank = ds[0], ds[1]
        if version == 1:
            at = 8
        elif version == 2:
            if ds[3] == 2:  # null dataspace
                return 0
            at = 4
        else:
            return None
        count = 1
        for k in range(rank):
            if at + (k + 1) * self._len_size > len(ds):
                return None
            count *= _uint(ds, at + k * self._len_size, self._len_size)
        return count


def _uint(data: bytes, at: int, width: int) -> int:
    if at + width > len(data):
        raise _Malformed("field past the end")
    return int.from_bytes(data[at : at + width], "little")


def _pad8(n: int) -> int:
    return (n + 7) & ~7
