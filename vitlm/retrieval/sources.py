"""Image collections to embed: a folder (recursive), a `datasets` data set (a saved folder or a Hub id) or parquet
files. Each is a list of ids in a fixed order and a way to read item `i`'s encoded image, so that an embedding job
can be cut into shards, resumed and spread over processes (sources are small and picklable: DataLoader workers and
Ray tasks get a copy and read only the items they decode).
"""

import hashlib
import io
import os
from pathlib import Path

import PIL.Image
import PIL.ImageOps

from ..models.image_processing_vitlm import as_pil_image, as_rgb

IMAGE_SUFFIXES = {".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp"}


class Source:
    """`ids[i]` names item `i` (a relative path, or a row's id); `read(i)` returns its encoded image (a file path
    or bytes); `description` says what was read, for the manifest."""

    ids: list[str]
    description: dict

    def read(self, index: int) -> str | bytes:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A hash of the ids in their order: a resumed job must cut the same shards."""
        digest = hashlib.sha256()
        for item in self.ids:
            digest.update(item.encode("utf-8", "surrogateescape") + b"\0")
        return digest.hexdigest()

    def __len__(self) -> int:
        return len(self.ids)


class FolderSource(Source):
    """Every image file under `root` (by suffix, case-insensitive; hidden files and folders skipped), sorted by
    relative path; the ids are those paths (with `/`)."""

    def __init__(self, root):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ValueError(f"{root} is not a folder")
        self.ids = sorted(
            path.relative_to(self.root).as_posix()
            for path in self.root.rglob("*")
            if path.suffix.lower() in IMAGE_SUFFIXES
            and not any(part.startswith(".") for part in path.relative_to(self.root).parts)
            and path.is_file()
        )
        self.description = {"kind": "folder", "root": str(self.root)}

    def read(self, index: int) -> str:
        return str(self.root / self.ids[index])


class MemorySource(Source):
    """Encoded images held in memory (PNG or JPEG bytes), named by `ids`."""

    def __init__(self, ids: list[str], payloads: list[bytes], description: dict | None = None):
        if len(ids) != len(payloads) or len(set(ids)) != len(ids):
            raise ValueError("a memory source needs one unique id per image")
        self.ids, self.payloads = list(ids), list(payloads)
        self.description = description or {"kind": "memory"}

    def read(self, index: int) -> bytes:
        return self.payloads[index]


def _image_payload(value, base: Path | None) -> str | bytes:
    """An image cell as datasets and parquet writers store it: raw bytes, a {"bytes", "path"} struct (datasets'
    `Image` feature) or a path string (relative to `base`)."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str) and value:
        return value if base is None or os.path.isabs(value) else str(base / value)
    raise ValueError(f"the image cell holds no image bytes or path (got {type(value).__name__})")


class DatasetSource(Source):
    """A `datasets` data set: a folder written by `save_to_disk`, or a Hub id (one `split`). Its `image_column` is
    read undecoded, so that an image datasets cannot decode is listed as an error like a corrupt file."""

    def __init__(self, name: str, image_column: str = "image", split: str = "train", id_column: str | None = None):
        import datasets

        if Path(name).is_dir():
            dataset = datasets.load_from_disk(name)
            if isinstance(dataset, datasets.DatasetDict):
                if split not in dataset:
                    raise ValueError(f"{name} has no split {split!r}; it has {sorted(dataset)}")
                dataset = dataset[split]
        else:
            dataset = datasets.load_dataset(name, split=split)
        _check_columns(name, dataset.column_names, image_column, id_column)
        if isinstance(dataset.features[image_column], datasets.Image):
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        self.dataset = dataset.select_columns([image_column])
        self.image_column = image_column
        self.ids = [str(value) for value in dataset[id_column]] if id_column else list(map(str, range(len(dataset))))
        _check_unique(name, self.ids, id_column)
        self.description = {"kind": "dataset", "name": name, "split": split, "image_column": image_column}

    def read(self, index: int) -> str | bytes:
        return _image_payload(self.dataset[index][self.image_column], None)


class ParquetSource(Source):
    """Parquet files (a file, or every `*.parquet` under a folder, sorted) with a column of image bytes, datasets'
    image structs or paths (relative paths from the file's folder). Ids: `id_column`, else `<file>:<row>`. A worker
    keeps the last row group it read, since items come to it in order."""

    def __init__(self, location, image_column: str = "image", id_column: str | None = None):
        import pyarrow.parquet as pq

        location = Path(location)
        files = sorted(location.rglob("*.parquet")) if location.is_dir() else [location]
        if not files:
            raise ValueError(f"no .parquet files under {location}")
        self.files = [str(file.resolve()) for file in files]
        self.image_column = image_column
        self.rows = []  # (file index, row group, row in group) per item
        self.ids = []
        for number, file in enumerate(files):
            parquet = pq.ParquetFile(file)
            _check_columns(str(file), parquet.schema_arrow.names, image_column, id_column)
            for group in range(parquet.num_row_groups):
                count = parquet.metadata.row_group(group).num_rows
                self.rows.extend((number, group, row) for row in range(count))
            if id_column:
                self.ids.extend(map(str, pq.read_table(file, columns=[id_column]).column(0).to_pylist()))
            else:
                name = file.relative_to(location).as_posix() if location.is_dir() else file.name
                self.ids.extend(f"{name}:{row}" for row in range(parquet.metadata.num_rows))
        _check_unique(str(location), self.ids, id_column)
        self.description = {"kind": "parquet", "files": self.files, "image_column": image_column}
        self._cached = None  # (file index, row group) -> its image column

    def __getstate__(self):
        return {**self.__dict__, "_cached": None}

    def read(self, index: int) -> str | bytes:
        import pyarrow.parquet as pq

        number, group, row = self.rows[index]
        if self._cached is None or self._cached[0] != (number, group):
            table = pq.ParquetFile(self.files[number]).read_row_group(group, columns=[self.image_column])
            self._cached = ((number, group), table.column(0))
        return _image_payload(self._cached[1][row].as_py(), Path(self.files[number]).parent)


def _check_columns(name: str, columns: list[str], image_column: str, id_column: str | None):
    for column in (image_column, id_column):
        if column is not None and column not in columns:
            raise ValueError(f"{name} has no column {column!r}; its columns are {columns}")


def _check_unique(name: str, ids: list[str], id_column: str | None):
    if id_column and len(set(ids)) != len(ids):
        raise ValueError(f"the id column {id_column!r} of {name} has duplicate values: ids must name one row each")


def open_source(
    location, kind: str = "auto", image_column: str = "image", split: str = "train", id_column: str | None = None
) -> Source:
    """The collection at `location`: `kind` "folder", "dataset" or "parquet"; "auto" takes a `.parquet` file or a
    folder holding parquet files as parquet, a folder written by `datasets`' `save_to_disk` as a dataset, any other
    folder as a folder of images, and a name that is no local path as a Hub data set id."""
    if isinstance(location, Source):
        return location
    path = Path(location)
    if kind == "auto":
        if path.suffix == ".parquet" or (path.is_dir() and any(path.glob("*.parquet"))):
            kind = "parquet"
        elif path.is_dir():
            saved = (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()
            kind = "dataset" if saved else "folder"
        elif path.exists() or str(location).startswith((".", "/", "~")):
            raise ValueError(f"{location} is neither a folder nor a .parquet file")
        else:
            kind = "dataset"
    if kind == "folder":
        return FolderSource(path)
    if kind == "parquet":
        return ParquetSource(path, image_column, id_column)
    if kind == "dataset":
        return DatasetSource(str(location), image_column, split, id_column)
    raise ValueError(f"unknown source kind {kind!r}; expected auto, folder, dataset or parquet")


def decode(payload) -> PIL.Image.Image:
    """An RGB image from a file path, encoded bytes or an image (PIL, array): EXIF orientation applied,
    transparency on white, 16-bit and float images mapped to 8 bits."""
    if isinstance(payload, bytes):
        with PIL.Image.open(io.BytesIO(payload)) as image:
            image.load()
            payload = PIL.ImageOps.exif_transpose(image)
    return as_rgb(as_pil_image(payload))
