"""OmegaConf resolvers that read dataset metadata, and ``register_resolvers``, the one call that
registers every resolver of the project's configs (these and ``core.resolvers``': the machine's
and the session's).

``${medmnist_num_classes:dermamnist}`` -> 7, ``${medmnist_in_chans:pneumoniamnist,true}`` -> 3,
``${medmnist_task:pneumoniamnist}`` -> "binary-class"; inside an image_table / image_folder
data config, ``${image_data:num_classes}`` and ``${image_data:task}`` read the table's labels
or the folder's class folders.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from omegaconf import DictConfig

from core.resolvers import RESOLVERS, register
from core.tasks import MULTI_LABEL
from datamodules.image_datamodule import task_of
from datamodules.image_records import folder_layout, read_table, table_classes
from datamodules.medmnist_files import medmnist_info


def _in_chans(flag: str, as_rgb: bool = False) -> int:
    return 3 if as_rgb else int(medmnist_info(flag)["n_channels"])


@lru_cache(maxsize=32)
def _table_classes(table: str, label_column: str | None, classes: tuple | None, stamp: tuple,
                   separator: str | None = None) -> tuple[str, ...]:
    """Class names of a table; ``stamp`` (mtime, size) makes an edited table be read again."""
    frame = read_table(table)
    if label_column not in frame.columns:
        raise ValueError(f"data.label_column={label_column!r} is not a column of {table}; "
                         f"its columns are {list(frame.columns)}")
    return tuple(table_classes(frame, label_column, classes, separator))


def _image_data(key: str, _parent_: DictConfig):
    """``num_classes`` or ``task`` of the image_table / image_folder config holding the call."""
    table, one_hot = _parent_.get("table"), _parent_.get("label_columns")
    multi_label = bool(_parent_.get("multi_label"))
    if table is not None and one_hot:  # one-hot columns name the classes (data.classes may reorder them)
        names = [str(c) for c in (_parent_.get("classes") or one_hot)]
    elif table is not None:
        path = Path(table).expanduser()
        stamp = (path.stat().st_mtime_ns, path.stat().st_size) if path.is_file() else ()
        classes = _parent_.get("classes")
        names = _table_classes(str(path), _parent_.get("label_column"),
                               tuple(str(c) for c in classes) if classes else None, stamp,
                               _parent_.get("label_separator") if multi_label else None)
    else:  # listing class folders is cheap: never cached
        names = folder_layout(Path(_parent_.get("root")).expanduser())[0]
    if key == "num_classes":
        return len(names)
    if key == "task":
        return MULTI_LABEL if multi_label else task_of(len(names))
    raise ValueError(f"${{image_data:{key}}}: unknown key; use num_classes or task")


DATA_RESOLVERS = {
    "medmnist_num_classes": lambda flag: len(medmnist_info(flag)["label"]),
    "medmnist_in_chans": _in_chans,
    "medmnist_task": lambda flag: medmnist_info(flag)["task"],
    "image_data": _image_data,
}


def register_resolvers() -> None:
    """Register every resolver of the project's configs (idempotent; the one call the entry
    points, evaluation and synthesis make): the data's and ``core.resolvers``'."""
    register(RESOLVERS)
    register(DATA_RESOLVERS)
