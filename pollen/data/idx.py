"""Reader and writer for the IDX file format used by MNIST, Fashion-MNIST and EMNIST.

An IDX file is a big-endian header followed by the raw array::

    bytes 0-1   zero
    byte  2     element type (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                0x0D float32, 0x0E float64)
    byte  3     number of dimensions d
    4*d bytes   each dimension as a big-endian uint32
    rest        prod(dims) elements, big-endian

Image files (``*-images-idx3-ubyte``) therefore have a 16-byte header (magic 2051) and label
files (``*-labels-idx1-ubyte``) an 8-byte header (magic 2049). Files may be gzip-compressed;
compression is detected from the content, not the name. Reference: Y. LeCun et al., "The MNIST
database of handwritten digits", http://yann.lecun.com/exdb/mnist/.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from pollen.errors import DataError

# element type code -> big-endian numpy dtype
_CODE_TO_DTYPE = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_DTYPE_TO_CODE = {dtype.newbyteorder("="): code for code, dtype in _CODE_TO_DTYPE.items()}
_GZIP_MAGIC = b"\x1f\x8b"
_FIX = "re-download the file or point --data-dir at an intact copy"


def _read_bytes(path: Path) -> bytes:
    """Returns the (decompressed) content of ``path``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{path} is a corrupt or truncated gzip file ({exc}); {_FIX}"
        ) from exc


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """Reads an IDX file, gzipped or plain.

    Args:
        path: The file to read.
        ndim: If given, the number of dimensions the file must have (3 for images, 1 for
            labels).

    Returns:
        A writable array in native byte order with the file's shape and element type.

    Raises:
        DataError: The file is missing, its magic number or dimensions are invalid, or its
            length does not match the header.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path} is too short to be an IDX file ({len(data)} bytes); {_FIX}")
    zero, code, dims_count = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in _CODE_TO_DTYPE:
        raise DataError(
            f"{path} has magic number 0x{data[:4].hex()}, which is not an IDX header "
            f"(expected 0x0000 followed by a type code in "
            f"{sorted(hex(c) for c in _CODE_TO_DTYPE)}); {_FIX}"
        )
    if ndim is not None and dims_count != ndim:
        raise DataError(
            f"{path} has {dims_count} dimensions, expected {ndim} "
            f"({'images' if ndim == 3 else 'labels' if ndim == 1 else 'array'}); "
            "check that image and label files are not swapped"
        )
    header = 4 + 4 * dims_count
    if len(data) < header:
        raise DataError(f"{path} is truncated inside its {header}-byte header; {_FIX}")
    dims = struct.unpack(f">{dims_count}I", data[4:header])
    dtype = _CODE_TO_DTYPE[code]
    expected = math.prod(dims) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        what = "truncated" if found < expected else "longer than its header says"
        raise DataError(
            f"{path} is {what}: header declares shape {dims} of {dtype.newbyteorder('=')} "
            f"({expected} bytes of data) but {found} bytes follow the header; {_FIX}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Writes ``array`` as an IDX file, gzip-compressed when ``path`` ends with ``.gz``.

    Args:
        path: Destination file.
        array: Array of uint8, int8, int16, int32, float32 or float64. int64 arrays are
            stored as int32 when their values fit.

    Returns:
        The path written.

    Raises:
        DataError: The element type cannot be stored in IDX.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.dtype == np.int64:
        limits = np.iinfo(np.int32)
        if array.size and (array.min() < limits.min or array.max() > limits.max):
            raise DataError(f"cannot write {path}: int64 values do not fit IDX's int32")
        array = array.astype(np.int32)
    native = array.dtype.newbyteorder("=")
    if native not in _DTYPE_TO_CODE or array.ndim == 0 or array.ndim > 255:
        raise DataError(
            f"cannot write {path}: IDX stores 1-255 dimensional arrays of "
            f"{sorted(str(d) for d in _DTYPE_TO_CODE)}, got {array.ndim}-d {array.dtype}"
        )
    header = struct.pack(">HBB", 0, _DTYPE_TO_CODE[native], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=native.newbyteorder(">")).tobytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
    return path
