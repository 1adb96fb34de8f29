"""``pollen new NAME``: a small project to start from — ``app.py``, ``config.toml``, ``README.md``.

The files are written from templates stored with the package (``pollen/templates/new/*.tmpl``),
with ``${name}`` replaced by the project's name (``string.Template``). The generated app runs as
written with what ``scripts/setup.sh`` installs (torch, numpy, scikit-learn), offline.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from string import Template

from pollen.errors import ConfigError

FILES = ("app.py", "config.toml", "README.md")  # each written from templates/new/<file>.tmpl


def template(file: str) -> str:
    """The text of the template of ``file`` (one of :data:`FILES`)."""
    return resources.files("pollen").joinpath("templates", "new", f"{file}.tmpl").read_text(encoding="utf-8")


def write_project(name: str, force: bool = False) -> Path:
    """Create the folder ``name`` with a project's ``app.py``, ``config.toml`` and ``README.md``.

    Args:
        name: the folder to create; its last part is the project's name in the files.
        force: write into an existing, non-empty folder (files of the same names are replaced,
            others are left alone).

    Returns:
        The folder, as given.

    Raises:
        ConfigError: ``name`` is a file, or a folder that is not empty and ``force`` is not set.
    """
    folder = Path(name).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file; give pollen new the name of a folder to create")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise ConfigError(f"folder {folder} already exists and is not empty; choose another name, or pass --force "
                          f"to write {', '.join(FILES)} into it (replacing files of those names)")
    project = folder.resolve().name or "project"
    texts = {file: Template(template(file)).substitute(name=project) for file in FILES}
    folder.mkdir(parents=True, exist_ok=True)
    for file, text in texts.items():
        (folder / file).write_text(text, encoding="utf-8")
    return folder
