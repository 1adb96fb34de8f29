"""IDX reader/writer: round trips and every way a file can be broken."""

import gzip
import struct

import numpy as np
import pytest

from pollen.data.idx import read_idx, write_idx
from pollen.errors import DataError


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_round_trip(tmp_path, name, dtype):
    array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    path = write_idx(tmp_path / name, array)
    back = read_idx(path, ndim=3)
    assert back.dtype == np.dtype(dtype) and back.flags.writeable
    np.testing.assert_array_equal(back, array)


def test_standard_headers(tmp_path):
    images = write_idx(tmp_path / "i", np.zeros((5, 28, 28), np.uint8)).read_bytes()
    labels = write_idx(tmp_path / "l", np.zeros(5, np.uint8)).read_bytes()
    assert struct.unpack(">IIII", images[:16]) == (2051, 5, 28, 28)
    assert struct.unpack(">II", labels[:8]) == (2049, 5)
    assert len(images) == 16 + 5 * 784 and len(labels) == 8 + 5


def test_gzip_detected_from_content(tmp_path):
    path = write_idx(tmp_path / "x.gz", np.arange(6, dtype=np.uint8))
    renamed = path.rename(tmp_path / "x-plain-name")
    np.testing.assert_array_equal(read_idx(renamed), np.arange(6))


def test_int64_stored_as_int32(tmp_path):
    back = read_idx(write_idx(tmp_path / "w", np.array([1, 70000], np.int64)))
    assert back.dtype == np.int32 and back.tolist() == [1, 70000]


def test_missing_file_names_path(tmp_path):
    with pytest.raises(DataError, match="not found.*nope"):
        read_idx(tmp_path / "nope")


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_data(tmp_path, gz):
    raw = write_idx(tmp_path / "full", np.ones((4, 2, 2), np.uint8)).read_bytes()[:-3]
    path = tmp_path / "cut"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError, match=r"cut is truncated.*16 bytes of data.*13 bytes"):
        read_idx(path)


def test_extra_bytes(tmp_path):
    path = write_idx(tmp_path / "f", np.ones(4, np.uint8))
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(DataError, match="longer than its header"):
        read_idx(path)


def test_truncated_header(tmp_path):
    path = tmp_path / "h"
    path.write_bytes(struct.pack(">I", 2051) + b"\0\0\0\5")
    with pytest.raises(DataError, match="truncated inside its 16-byte header"):
        read_idx(path)


def test_too_short(tmp_path):
    path = tmp_path / "s"
    path.write_bytes(b"\0\0")
    with pytest.raises(DataError, match="too short"):
        read_idx(path)


@pytest.mark.parametrize("magic", [b"\x12\x34\x08\x03", b"\0\0\x07\x03", b"PK\x03\x04"])
def test_wrong_magic(tmp_path, magic):
    path = tmp_path / "m"
    path.write_bytes(magic + bytes(100))
    with pytest.raises(DataError, match=f"{path}.*not an IDX header.*re-download"):
        read_idx(path)


def test_wrong_ndim(tmp_path):
    path = write_idx(tmp_path / "labels", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="1 dimensions, expected 3.*swapped"):
        read_idx(path, ndim=3)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "bad.gz"
    raw = write_idx(tmp_path / "ok", np.random.default_rng(0).integers(0, 255, 500, np.uint8))
    path.write_bytes(gzip.compress(raw.read_bytes())[:-20])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_idx(path)


def test_write_rejects_unsupported(tmp_path):
    with pytest.raises(DataError, match="cannot write"):
        write_idx(tmp_path / "b", np.zeros(3, np.bool_))
    with pytest.raises(DataError, match="int32"):
        write_idx(tmp_path / "big", np.array([2**40]))
