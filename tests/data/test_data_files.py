"""Loaders of one party's own files: real small files written to tmp_path and read back."""

import pickle
import sys

import numpy as np
import pytest
import torch

from pollen.data import ImageFolder, Table, load_image_folder, read_csv, read_parquet, read_tensors
from pollen.errors import DataError, MissingExtraError


def write(tmp_path, text, name="data.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


IRIS = """sepal,petal,species
5.1,1.4,setosa
7.0,4.7,versicolor
6.3,6.0,virginica
4.9,1.5,setosa
"""


# --- CSV ------------------------------------------------------------------------------------

def test_csv_string_labels_sorted(tmp_path):
    table = read_csv(write(tmp_path, IRIS), "species")
    assert isinstance(table, Table) and table.task == "classification" and len(table) == 4
    assert table.x.dtype == torch.float32 and table.x.shape == (4, 2)
    assert torch.equal(table.x, torch.tensor([[5.1, 1.4], [7.0, 4.7], [6.3, 6.0], [4.9, 1.5]]))
    assert table.y.dtype == torch.int64 and table.y.tolist() == [0, 1, 2, 0]
    assert table.classes == ("setosa", "versicolor", "virginica")
    assert table.feature_names == ("sepal", "petal") and table.target_names == ("species",)
    x, y = table  # unpacks
    assert x is table.x and y is table.y


def test_csv_classes_fix_the_mapping_even_for_a_missing_class(tmp_path):
    classes = ["virginica", "unseen", "setosa", "versicolor"]
    table = read_csv(write(tmp_path, IRIS), "species", classes=classes)
    assert table.y.tolist() == [2, 3, 0, 2]
    assert table.classes == tuple(classes)


def test_csv_integer_labels_used_as_they_are(tmp_path):
    path = write(tmp_path, "a,b,y\n1,2,0\n3,4,2\n5,6,2\n")
    table = read_csv(path, "y")
    assert table.task == "classification"
    assert table.y.tolist() == [0, 2, 2] and table.classes == (0, 1, 2)
    # with classes= integer cells match integer (or string) class values
    assert read_csv(path, "y", classes=[2, 0]).y.tolist() == [1, 0, 0]
    assert read_csv(path, "y", classes=["2", "0"]).y.tolist() == [1, 0, 0]


def test_csv_regression_target_and_feature_selection(tmp_path):
    path = write(tmp_path, "a,b,c,price\n1,10,100,1.25\n2,20,200,-3.5\n3,30,300,7\n")
    table = read_csv(path, "price", features=["c", "a"])
    assert table.task == "regression" and table.classes is None
    assert table.y.dtype == torch.float32 and table.y.tolist() == [1.25, -3.5, 7.0]
    assert table.x.tolist() == [[100, 1], [200, 2], [300, 3]]
    assert table.feature_names == ("c", "a")


def test_csv_auto_task_threshold(tmp_path):
    rows = "".join(f"{i},{i}\n" for i in range(51))  # 51 distinct integers: more than 50
    assert read_csv(write(tmp_path, "x,y\n" + rows), "y").task == "regression"
    rows = "".join(f"{i},{i % 50}.0\n" for i in range(60))  # 50 distinct integer-valued floats
    table = read_csv(write(tmp_path, "x,y\n" + rows), "y")
    assert table.task == "classification" and table.y.tolist() == [i % 50 for i in range(60)]
    assert read_csv(write(tmp_path, "x,y\n1,0.5\n2,1\n"), "y").task == "regression"
    forced = read_csv(write(tmp_path, "x,y\n1,0\n2,1\n"), "y", task="regression")
    assert forced.task == "regression" and forced.y.dtype == torch.float32


def test_csv_several_regression_targets(tmp_path):
    path = write(tmp_path, "f,t1,t2\n1,0.5,10\n2,1.5,20\n")
    table = read_csv(path, ["t2", "t1"])
    assert table.task == "regression" and table.target_names == ("t2", "t1")
    assert table.y.dtype == torch.float32 and table.y.tolist() == [[10, 0.5], [20, 1.5]]
    assert table.x.tolist() == [[1], [2]]


def test_csv_multilabel(tmp_path):
    path = write(tmp_path, "f,red,round\n1,1,0\n2,0,0\n3,1,1\n")
    table = read_csv(path, ["red", "round"], task="multilabel")
    assert table.task == "multilabel" and table.y.dtype == torch.float32
    assert table.y.tolist() == [[1, 0], [0, 0], [1, 1]]
    bad = write(tmp_path, "f,red,round\n1,1,0\n2,2,0\n", "bad.csv")
    with pytest.raises(DataError, match="'red' holds 2 on line 3, expected 0 or 1"):
        read_csv(bad, ["red", "round"], task="multilabel")


def test_csv_standardize_uses_the_files_own_statistics(tmp_path):
    path = write(tmp_path, "a,b,k,y\n1,10,5,0\n2,30,5,1\n6,20,5,0\n")
    table = read_csv(path, "y", standardize=True)
    raw = np.array([[1, 10], [2, 30], [6, 20]], np.float64)
    expected = (raw - raw.mean(axis=0)) / raw.std(axis=0)
    np.testing.assert_allclose(table.x[:, :2].numpy(), expected, rtol=1e-6)
    assert table.x[:, 2].tolist() == [0, 0, 0]  # a constant feature becomes 0, not NaN


def test_csv_delimiter_quotes_bom_and_blank_lines(tmp_path):
    text = 'name;"value, with comma";label\n\n"x";1.5e0;a\n\n"y";2;b\n'
    path = write(tmp_path, text, encoding="utf-8-sig")
    table = read_csv(path, "label", features=["value, with comma"], delimiter=";")
    assert table.x.tolist() == [[1.5], [2.0]] and table.y.tolist() == [0, 1]


# --- CSV errors -------------------------------------------------------------------------------

def test_csv_missing_column_lists_the_columns(tmp_path):
    with pytest.raises(DataError, match="no column 'Species'.*'sepal', 'petal', 'species'"):
        read_csv(write(tmp_path, IRIS), "Species")
    with pytest.raises(DataError, match="no column 'width'"):
        read_csv(write(tmp_path, IRIS), "species", features=["sepal", "width"])


def test_csv_empty_cell_names_column_and_line(tmp_path):
    path = write(tmp_path, "a,b,y\n1,2,0\n3,,1\n")
    with pytest.raises(DataError, match=r"column 'b' is empty on line 3; fill in the value or "
                                        r"drop the row \(leave the column out with features="):
        read_csv(path, "y")
    path = write(tmp_path, "a,y\n1,0\n2,\n", "label.csv")
    with pytest.raises(DataError, match="target 'y' is empty on line 3"):
        read_csv(path, "y")


def test_csv_bad_number_names_value_column_and_line(tmp_path):
    path = write(tmp_path, "a,colour,y\n1,2,0\n3,4,1\n5,red,1\n")
    with pytest.raises(DataError, match="column 'colour' holds 'red' on line 4, expected a finite "
                                        "number; features must be numeric"):
        read_csv(path, "y")
    path = write(tmp_path, "a,y\n1,0.5\n2,inf\n", "inf.csv")
    with pytest.raises(DataError, match="column 'y' holds 'inf' on line 3"):
        read_csv(path, "y", task="regression")


def test_csv_unknown_label_with_classes(tmp_path):
    with pytest.raises(DataError, match="label 'virginica' on line 4 is not one of "
                                        r"classes=\['setosa', 'versicolor'\]"):
        read_csv(write(tmp_path, IRIS), "species", classes=["setosa", "versicolor"])
    with pytest.raises(DataError, match="classes lists 'setosa' twice"):
        read_csv(write(tmp_path, IRIS), "species", classes=["setosa", "setosa"])


def test_csv_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match=f"CSV file {tmp_path / 'nope.csv'} not found"):
        read_csv(tmp_path / "nope.csv", "y")


def test_csv_other_refusals(tmp_path):
    with pytest.raises(DataError, match="line 3 has 2 cells but the header .* names 3 columns"):
        read_csv(write(tmp_path, "a,b,y\n1,2,0\n3,4\n"), "y")
    with pytest.raises(DataError, match="label -1 on line 2 is negative.*classes="):
        read_csv(write(tmp_path, "a,y\n1,-1\n2,0\n"), "y")
    with pytest.raises(DataError, match="classification takes one target column, got 2"):
        read_csv(write(tmp_path, "a,y,z\n1,0,1\n"), ["y", "z"], task="classification")
    with pytest.raises(DataError, match="classes= is for classification.*'regression'"):
        read_csv(write(tmp_path, "a,y\n1,0.5\n"), "y", task="regression", classes=[0, 1])
    with pytest.raises(DataError, match="unknown task 'binary'; valid tasks: auto, "):
        read_csv(write(tmp_path, "a,y\n1,0\n"), "y", task="binary")
    with pytest.raises(DataError, match="has no data rows"):
        read_csv(write(tmp_path, "a,y\n"), "y")
    with pytest.raises(DataError, match="is empty; expected a header line"):
        read_csv(write(tmp_path, ""), "y")


# --- Parquet ----------------------------------------------------------------------------------

def test_parquet_reads_like_csv(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"a": [1, 2, 3], "b": [0.5, 1.5, 2.5], "kind": ["y", "x", "y"],
                             "price": [10.25, 20.5, 30.75]}), path)
    table = read_parquet(path, "kind", features=["b", "a"])
    assert table.task == "classification" and table.classes == ("x", "y")
    assert table.y.tolist() == [1, 0, 1] and table.x.tolist() == [[0.5, 1], [1.5, 2], [2.5, 3]]
    table = read_parquet(path, "price", features=["a"], standardize=True)
    assert table.task == "regression" and table.y.tolist() == [10.25, 20.5, 30.75]
    np.testing.assert_allclose(table.x[:, 0].numpy(), [-1.2247449, 0, 1.2247449], rtol=1e-6)
    assert read_parquet(path, "kind", classes=["y", "x", "z"]).y.tolist() == [0, 1, 0]

    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"a": [1, None, 3], "y": [0, 1, 0]}), nulls)
    with pytest.raises(DataError, match="column 'a' is empty on row 2"):
        read_parquet(nulls, "y")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_parquet(write(tmp_path, IRIS, "fake.parquet"), "species")


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now fails
    with pytest.raises(MissingExtraError, match=r"pip install 'pollen-fl\[parquet\]'"):
        read_parquet(tmp_path / "data.parquet", "y")


# --- tensor files -----------------------------------------------------------------------------

X = np.array([[0.5, -1.0], [2.0, 3.25], [4.0, 0.0]])  # float64 on purpose


def test_npz_classification(tmp_path):
    np.savez(tmp_path / "d.npz", x=X, y=np.array([2, 0, 2], np.int32), extra=np.zeros(1))
    table = read_tensors(tmp_path / "d.npz")
    assert table.task == "classification" and table.classes == (0, 1, 2)
    assert table.x.dtype == torch.float32 and table.x.tolist() == X.tolist()
    assert table.y.dtype == torch.int64 and table.y.tolist() == [2, 0, 2]
    assert table.feature_names == ("x[0]", "x[1]") and table.target_names == ("y",)


def test_pt_dict_and_tuple(tmp_path):
    torch.save({"inputs": torch.tensor(X), "target": torch.tensor([1.5, 2.5, 3.5])},
               tmp_path / "d.pt")
    table = read_tensors(tmp_path / "d.pt", x="inputs", y="target")
    assert table.task == "regression" and table.classes is None
    assert table.y.dtype == torch.float32 and table.y.tolist() == [1.5, 2.5, 3.5]
    images = torch.arange(24, dtype=torch.uint8).reshape(3, 2, 2, 2)  # (N, C, H, W)
    torch.save((images, torch.tensor([[1, 0], [0, 0], [1, 1]])), tmp_path / "d.pth")
    table = read_tensors(tmp_path / "d.pth")
    assert table.task == "multilabel" and table.y.dtype == torch.float32
    assert table.y.tolist() == [[1, 0], [0, 0], [1, 1]]
    assert table.x.shape == (3, 2, 2, 2) and table.x.dtype == torch.float32
    assert table.x[2, 1, 1, 1].item() == 23.0 and table.feature_names == ()


def test_safetensors(tmp_path):
    from safetensors.torch import save_file

    save_file({"features": torch.tensor(X, dtype=torch.float32), "labels": torch.tensor([0, 1, 1])},
              tmp_path / "d.safetensors")
    table = read_tensors(tmp_path / "d.safetensors", x="features", y="labels")
    assert table.y.tolist() == [0, 1, 1] and table.x.tolist() == X.tolist()
    assert table.task == "classification" and table.classes == (0, 1)


def test_tensor_file_errors(tmp_path):
    np.savez(tmp_path / "d.npz", inputs=X, labels=np.array([0, 1, 1]))
    with pytest.raises(DataError, match="has no 'x'; it holds: 'inputs', 'labels'. Pass x="):
        read_tensors(tmp_path / "d.npz")
    with pytest.raises(DataError, match=r"unknown suffix '.h5'; read_tensors reads .npz, .pt"):
        read_tensors(write(tmp_path, "", "d.h5"))
    with pytest.raises(DataError, match="tensor file .*missing.pt not found"):
        read_tensors(tmp_path / "missing.pt")
    np.savez(tmp_path / "short.npz", x=X, y=np.array([0, 1]))
    with pytest.raises(DataError, match="'x' has 3 rows but 'y' has 2"):
        read_tensors(tmp_path / "short.npz")
    torch.save({"x": torch.tensor(X), "y": torch.tensor([0, -1, 1])}, tmp_path / "neg.pt")
    with pytest.raises(DataError, match="label -1; class labels must be >= 0"):
        read_tensors(tmp_path / "neg.pt")
    torch.save({"x": torch.tensor(X), "y": [0, 1, 1]}, tmp_path / "list.pt")
    with pytest.raises(DataError, match="'y' is a list, expected a tensor"):
        read_tensors(tmp_path / "list.pt")
    with pytest.raises(DataError, match="cannot be loaded with weights_only=True"):
        read_tensors(write(tmp_path, "not a checkpoint", "junk.pt"))


# --- image folders ----------------------------------------------------------------------------

def write_image(path, rgb, size=(3, 2), mode="RGB"):  # size is PIL's (width, height)
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, rgb).save(path)


@pytest.fixture
def pets(tmp_path):
    pytest.importorskip("PIL")
    root = tmp_path / "pets"
    write_image(root / "dog" / "b.png", (255, 0, 51))
    write_image(root / "cat" / "a.PNG", (102, 102, 102))  # suffixes are case-insensitive
    write_image(root / "cat" / "nested" / "c.bmp", (0, 255, 0))
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_reads_lazily_in_sorted_class_order(pets):
    folder = ImageFolder(pets)
    assert folder.classes == ("cat", "dog") and len(folder) == 3
    assert [(p.relative_to(pets).as_posix(), label) for p, label in folder.samples] == [
        ("cat/a.PNG", 0), ("cat/nested/c.bmp", 0), ("dog/b.png", 1)]
    x, label = folder[2]
    assert label == 1 and x.dtype == torch.float32 and x.shape == (3, 2, 3)  # (C, H, W)
    assert x[:, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.2])
    assert torch.all(x == x[:, :1, :1])
    folder = pickle.loads(pickle.dumps(folder))  # DataLoader workers receive a pickled copy
    assert folder[0][0][:, 1, 2].tolist() == pytest.approx([0.4, 0.4, 0.4])


def test_image_folder_options(pets):
    folder = ImageFolder(pets, size=(4, 5), grayscale=True, mean=[0.4], std=[0.5])
    x, _ = folder[0]  # gray 102 -> 0.4 -> (0.4 - 0.4) / 0.5
    assert x.shape == (1, 4, 5) and torch.allclose(x, torch.zeros(1, 4, 5), atol=1e-6)
    x, _ = folder[1]  # pure green: luminance 587/1000 * 255 -> 150/255
    assert torch.allclose(x, torch.full((1, 4, 5), (150 / 255 - 0.4) / 0.5), atol=1e-6)
    x, _ = ImageFolder(pets, mean=[0.5, 0.5, 0.5], std=[0.25, 0.5, 1.0])[2]
    assert x[:, 0, 0].tolist() == pytest.approx([2.0, -1.0, -0.3])
    with pytest.raises(DataError, match=r"need 3 value\(s\), one per channel"):
        ImageFolder(pets, mean=[0.5], std=[0.5])
    with pytest.raises(DataError, match="size must be"):
        ImageFolder(pets, size=32)


def test_image_folder_classes_argument(pets):
    folder = ImageFolder(pets, classes=["dog", "bird", "cat"])
    assert [label for _, label in folder.samples] == [0, 2, 2]
    assert folder.classes == ("dog", "bird", "cat")
    with pytest.raises(DataError, match="folder 'dog' is not one of classes=\\['cat'\\]"):
        ImageFolder(pets, classes=["cat"])


def test_load_image_folder(pets):
    table = load_image_folder(pets, size=(2, 2))
    assert table.task == "classification" and table.classes == ("cat", "dog")
    assert table.x.shape == (3, 3, 2, 2) and table.y.tolist() == [0, 0, 1]
    expected = torch.tensor([[0.4, 0.4, 0.4], [0, 1, 0], [1, 0, 0.2]])[:, :, None, None]
    assert torch.allclose(table.x, expected.expand(3, 3, 2, 2), atol=1e-6)
    write_image(pets / "dog" / "big.png", (0, 0, 0), size=(8, 8))
    with pytest.raises(DataError, match="big.png is 8x8 but .*a.PNG is 2x3; pass size="):
        load_image_folder(pets)


def test_image_folder_errors(tmp_path):
    pytest.importorskip("PIL")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images: expected .*<class name>/<image>.*"
                                        "sub-folders found: cat"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(DataError, match="image folder .*nowhere not found"):
        ImageFolder(tmp_path / "nowhere")
    (tmp_path / "bad" / "cat").mkdir(parents=True)
    (tmp_path / "bad" / "cat" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="x.png is not a readable image"):
        ImageFolder(tmp_path / "bad")[0]
