"""Which files make up a checkpoint, by format: the facts the readers and the daemon share.

    classify(name)            a directory entry -> ("bundle", prefix name) | ("hdf5"|"keras", name) | None
    is_temporary(name)        a save's (or a copier's) temp artefact, never a checkpoint
    saved_model_marker(dir)   saved_model.pb / .pbtxt: what makes a directory a SavedModel
    shard_path, data_shards   a bundle's data files; bundle_shard_count(prefix) from its index header
    temp_leftovers(prefix), saved_model_leftovers(dir)   what an unfinished save leaves behind
    bundle_listing(prefix)    a bundle's data files and temp artefacts, from one directory listing
    checkpoint_exists(path), read_state_file(dir), looks_like_fingerprint(path)

Light on purpose (stdlib, and crc32c through the index reader; no numpy): the daemon's main
process decides with it whether a checkpoint is completely written.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import os
import re
import struct
import zlib
from dataclasses import dataclass

from ckptwatch.formats.files import NotRegularFile, open_regular
from ckptwatch.formats.table import FOOTER_SIZE, TABLE_MAGIC, TableError, first_entry
from ckptwatch.formats.wire import read_index

BUNDLE, HDF5, KERAS, SAVEDMODEL, FINGERPRINT = "bundle", "hdf5", "keras", "savedmodel", "fingerprint"
V1 = "tf-v1"  # TensorFlow's V1 checkpoint format (formats.v1)

INDEX_SUFFIX = ".index"
HDF5_SUFFIXES = (".h5", ".hdf5")  # includes Keras 3 `*.weights.h5`
KERAS_SUFFIX = ".keras"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK"  # a .keras archive
GZIP_MAGIC = b"\x1f\x8b"  # a gzipped fingerprint
RELOCATED_CHECK = "integrity.relocated"  # an info finding: a state file's path found beside it instead
STATE_FILE = "checkpoint"  # `model_checkpoint_path: "ckpt-3"`, written by Saver / CheckpointManager
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
SAVED_MODEL_VARIABLES = os.path.join("variables", "variables")  # the bundle prefix inside a SavedModel
SAVED_MODEL_FINGERPRINT = "fingerprint.pb"  # TF2 writes it right after saved_model.pb
FINGERPRINT_SCHEMA = "ckptwatch.fingerprint/v1"  # ckptwatch's own; written and read by ckptwatch.verify.fingerprint
FINGERPRINT_SCHEMA_V2 = "ckptwatch.fingerprint/v2"  # the compact binary form, after FINGERPRINT_MAGIC
FINGERPRINT_MAGIC = b"\x89CKWFP\r\n\x1a\n"  # v2
FINGERPRINT_SCHEMA_V3 = "ckptwatch.fingerprint/v3"  # columnar binary form, after FINGERPRINT_MAGIC_V3
FINGERPRINT_MAGIC_V3 = b"\x89CKWF3\r\n\x1a\n"
FINGERPRINT_MAGICS = (FINGERPRINT_MAGIC, FINGERPRINT_MAGIC_V3)  # the binary forms

# Artefacts of a save in progress, never checkpoints themselves:
#   <prefix>_temp/ (and the older <prefix>_temp_<uuid>/), *.tempstate<random> (TF's atomic
#   writes), checkpoint.tmp<hex> and model.ckpt-N.meta.tmp<hex> (TF's state / graph files),
#   *.tmp, *.partial (copiers, downloaders), temp-<timestamp>/ (Estimator's exporters, renamed
#   to <timestamp>/ when done).
TEMPORARY = re.compile(r"_temp(_[0-9a-fA-F-]+)?$|\.tempstate|^checkpoint\.tmp|\.tmp[0-9a-f]*$|\.partial$|^temp-\d+$")


def is_temporary(name: str) -> bool:
    """True for hidden files and the temporary artefacts of a save or a copy."""
    return name.startswith(".") or bool(TEMPORARY.search(name))


def classify(name: str) -> tuple[str, str] | None:
    """(kind, base name) of a directory entry that is a checkpoint file, else None.

    `ckpt-3.index` -> ("bundle", "ckpt-3"); `w.weights.h5` -> ("hdf5", "w.weights.h5");
    `m.keras` -> ("keras", "m.keras"). Data shards, state files and temp artefacts -> None.
    """
    if is_temporary(name):
        return None
    if name.endswith(INDEX_SUFFIX) and len(name) > len(INDEX_SUFFIX):
        return BUNDLE, name[: -len(INDEX_SUFFIX)]
    if name.endswith(KERAS_SUFFIX) and len(name) > len(KERAS_SUFFIX):
        return KERAS, name
    if name.endswith(HDF5_SUFFIXES):
        return HDF5, name
    return None


def saved_model_marker(directory: str) -> str | None:
    """The path of `directory`'s saved_model.pb (or .pbtxt) if it has one, else None."""
    for name in SAVED_MODEL_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def shard_path(prefix: str, shard: int, num_shards: int) -> str:
    """`ckpt-3.data-00000-of-00002`: the K-th of N data files of a bundle."""
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


def data_shards(prefix: str) -> list[str]:
    """The data files present for `prefix` (whatever the index says), sorted."""
    return sorted(glob.glob(glob.escape(prefix) + ".data-*"))


def bundle_shard_count(prefix: str) -> int:
    """How many data files the bundle at `prefix` has, from its index's header entry. Only
    the footer, the index block and the first data block are read and checked (bounded work
    however large the index): tensor entries are not decoded. Raises IntegrityError when the
    index does not parse or is not a regular file, OSError when it cannot be read."""
    return read_index(prefix + INDEX_SUFFIX, header_only=True).num_shards


@dataclass(frozen=True)
class BundleListing:
    """What one listing of a bundle's directory holds for `prefix`."""

    shards: list[str]  # paths of `<prefix>.data-*` (as data_shards), sorted
    leftovers: list[str]  # base names of temp artefacts (as temp_leftovers), sorted


def bundle_listing(prefix: str) -> BundleListing:
    """The data files and temp artefacts of the bundle at `prefix`, from ONE listing of its
    directory (the daemon checks every pending candidate at each rescan: one listing each, not
    one per pattern). The same names as `data_shards` and `temp_leftovers`; an unreadable or
    missing directory lists nothing."""
    directory, base = os.path.split(prefix)
    try:
        names = os.listdir(directory or ".")
    except OSError:
        names = []
    shards, leftovers = [], []
    temp, temp_any, data, index_temp = base + "_temp", base + "_temp_", base + ".data-", base + ".index.tempstate"
    for name in names:
        if name.startswith(data):
            shards.append(os.path.join(directory, name))
            if ".tempstate" in name[len(data) :]:
                leftovers.append(name)
        elif name == temp or name.startswith((temp_any, index_temp)):
            leftovers.append(name)
    return BundleListing(sorted(shards), sorted(leftovers))


def temp_leftovers(prefix: str) -> list[str]:
    """Base names of the temp artefacts of an unfinished save of `prefix`, if any remain:
    `<prefix>_temp`, `<prefix>_temp_*`, `<prefix>.data-*.tempstate*`, `<prefix>.index.tempstate*`."""
    return bundle_listing(prefix).leftovers


def saved_model_leftovers(directory: str, variables: BundleListing | None = None) -> list[str]:
    """Temp artefacts of an unfinished export: `saved_model.pb.tempstate*` and the like next
    to saved_model.pb, and those of the variables bundle, as paths relative to `directory`.
    `variables`: the variables bundle's listing, when the caller already has it."""
    if variables is None:
        variables = bundle_listing(os.path.join(directory, SAVED_MODEL_VARIABLES))
    found = [os.path.join(os.path.dirname(SAVED_MODEL_VARIABLES), n) for n in variables.leftovers]
    with contextlib.suppress(OSError):
        found += [n for n in os.listdir(directory) if TEMPORARY.search(n)]
    return sorted(found)


_V1_SHARD = re.compile(r"-(?:\?{5}|\d{5})-of-(\d{5})$")


def v1_checkpoint_files(path: str) -> list[str]:
    """The files of a TensorFlow V1 checkpoint at `path`, else []: the file itself, or all
    shards of `path-00000-of-00002` (given as the prefix, as one shard, or as a state file's
    `path-?????-of-00002` pattern). A V1 checkpoint is a LevelDB table without `.index` whose
    header entry (key "") is a SavedTensorSlices proto (field 1, length-delimited), where a
    bundle index has a BundleHeaderProto (field 1, a varint)."""
    if os.path.exists(path + INDEX_SUFFIX):
        return []
    shard = _V1_SHARD.search(path)
    if shard:
        pattern = glob.escape(path[: shard.start()]) + f"-[0-9][0-9][0-9][0-9][0-9]-of-{shard.group(1)}"
        candidates = sorted(glob.glob(pattern))
    elif os.path.isfile(path):
        candidates = [path]
    else:
        candidates = sorted(glob.glob(glob.escape(path) + "-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]"))
    return [c for c in candidates if _is_v1_table(c)]


def v1_prefix(path: str) -> str:
    """`model.ckpt-7-?????-of-00002` or `model.ckpt-7-00001-of-00002` -> `model.ckpt-7`."""
    shard = _V1_SHARD.search(path)
    return path[: shard.start()] if shard else path


def _is_v1_table(path: str) -> bool:
    """A table (its footer's magic number) whose header entry is a SavedTensorSlices proto; a
    table whose first blocks are damaged counts too (opening it says what is wrong)."""
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size < FOOTER_SIZE:
                return False
            f.seek(size - 8)
            if f.read(8) != struct.pack("<Q", TABLE_MAGIC):
                return False
            try:
                first = first_entry(f, size, max_block=1 << 20)
            except TableError:
                return True
    except (OSError, NotRegularFile):
        return False
    return first is not None and first[0] == b"" and len(first[1]) > 0 and first[1][0] == 0x0A


def checkpoint_exists(path: str | None) -> bool:
    """A file, directory or bundle prefix (its `.index`) is present: used to tell a
    deleted checkpoint (CheckpointManager's max_to_keep) from a broken one."""
    return path is not None and path != "" and (os.path.exists(path) or os.path.exists(path + INDEX_SUFFIX))


def reference_available(path: str | None) -> bool:
    """checkpoint_exists, and for a directory whose `checkpoint` state file names a checkpoint
    that is not there (not even beside it), False: a golden directory whose checkpoint is not
    mounted (yet) is "not available", like a missing path, not an unreadable reference."""
    if not checkpoint_exists(path):
        return False
    assert path is not None
    if os.path.isdir(path) and not saved_model_marker(path):
        try:
            latest = latest_from_state_file(path)
        except NotRegularFile:
            return True  # opening it says what is wrong
        return latest is None or latest.exists
    return True


def read_state_file(directory: str) -> str | None:
    """The latest checkpoint prefix named by `<directory>/checkpoint`, or None (see
    latest_from_state_file for one that was moved here from another machine)."""
    latest = latest_from_state_file(directory)
    return latest.prefix if latest else None


@dataclass(frozen=True)
class StateFileEntry:
    """What a `checkpoint` state file names, and where that checkpoint is on this machine."""

    recorded: str  # model_checkpoint_path as written
    prefix: str  # where TF would look: relative paths joined to the state file's directory
    relocated: bool = False  # `recorded` does not exist; its basename does, beside the state file
    exists: bool = True  # False: neither the recorded path nor its basename beside the file is there

    def note(self) -> str:
        return (
            f"the `checkpoint` state file names {self.recorded}, which does not exist here; "
            f"using {os.path.basename(self.prefix)} beside it (the directory was copied or mounted elsewhere)"
        )


def latest_from_state_file(directory: str) -> StateFileEntry | None:
    """The `model_checkpoint_path` of `<directory>/checkpoint`, resolved as TensorFlow does
    (a relative path is joined to the directory), or None when there is no state file or it
    names nothing. A path that is not there but whose basename is a checkpoint beside the state
    file (a directory copied or mounted elsewhere keeps the writer's absolute paths) resolves
    to that one, `relocated`. Raises NotRegularFile when the state file is a FIFO, socket or
    device (never opened for reading)."""
    path = os.path.join(directory, STATE_FILE)
    try:
        with open_regular(path) as f:
            text = f.read(1 << 20).decode("utf-8", "replace")
    except NotRegularFile:
        raise
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model_checkpoint_path":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
            if not value or "\x00" in value:
                return None
            prefix = value if os.path.isabs(value) else os.path.join(directory, value)
            if _bundle_there(prefix):
                return StateFileEntry(value, prefix)
            base = value.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]  # a Windows writer's path too
            beside = os.path.join(directory, base)
            if base and base not in (".", "..") and beside != prefix and _bundle_there(beside):
                return StateFileEntry(value, beside, relocated=True)
            return StateFileEntry(value, prefix, exists=False)
    return None


def _bundle_there(prefix: str) -> bool:
    """A bundle (its index, or any data shard: a broken one is still there) or a file at `prefix`."""
    try:
        if os.path.exists(prefix + INDEX_SUFFIX) or os.path.isfile(prefix) or data_shards(prefix):
            return True
        return bool(v1_checkpoint_files(prefix))
    except (OSError, ValueError):  # a name too long for the filesystem
        return False


def looks_like_fingerprint(path: str) -> bool:
    """Whether `path` is a ckptwatch fingerprint (JSON, maybe gzipped, naming its schema):
    a look at its first bytes, not a parse (ckptwatch.verify.fingerprint opens it)."""
    try:
        with open_regular(path) as f:
            head = f.read(4096)
            if head.startswith(FINGERPRINT_MAGICS):
                return True
            if head[:2] == GZIP_MAGIC:
                f.seek(0)
                with gzip.GzipFile(fileobj=f, mode="rb") as z:
                    head = z.read(4096)  # bounded: GzipFile.read(n) inflates at most n bytes
    except (OSError, EOFError, NotRegularFile, zlib.error):
        return False
    return head.lstrip()[:1] == b"{" and FINGERPRINT_SCHEMA.encode() in head
