"""A project on disk: the DuckDB file and its sibling ``artminer-data/`` folder.

``artminer-data/`` holds what is too big for the database: feature caches (per model),
fine-tuned checkpoints, training logs and image caches for IIIF sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from db.migrations import SchemaVersionError
from db.store import Store
from engine.backbone import Backbone, create_backbone, resolve_device
from engine.images import set_max_pixels
from engine.types import ModelRef
from hitl.formats.image_files import project_max_pixels
from hitl.roles import User, require

DEFAULT_MODEL = "effnet-lite0"


@dataclass(frozen=True)
class ProjectPaths:
    project: Path

    @property
    def data_dir(self) -> Path:
        return self.project.parent / "artminer-data"

    @property
    def features(self) -> Path:
        return self.data_dir / "features"

    @property
    def checkpoints(self) -> Path:
        return self.data_dir / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.data_dir / "logs"

    @property
    def image_cache(self) -> Path:
        return self.data_dir / "images"


class ProjectFileError(ValueError):
    """The file is not an ArtMiner project this code can open (bad input: exit 2)."""


def open_project(path: str | Path, create: bool = False) -> tuple[Store, ProjectPaths]:
    """Open a project file; a missing one is an error unless ``create``.

    Raises:
        FileNotFoundError: no such file (and not ``create``).
        ProjectFileError: not a DuckDB file, a DuckDB file of another program, or a
            project written by a newer ArtMiner; one line saying which.
    """
    path = Path(path)
    if not create and not path.is_file():
        raise FileNotFoundError(f"project file not found: {path} (create one with `artminer ingest` or `artminer demo`)")
    if path.exists() and not path.is_file():
        raise ProjectFileError(f"{path} is not a file")
    try:
        store = Store(path)
    except SchemaVersionError as err:
        raise ProjectFileError(str(err)) from err
    except Exception as err:  # duckdb's own errors: the file is not a database at all
        if "duckdb" not in type(err).__module__ and not isinstance(err, OSError):
            raise
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ProjectFileError(f"{path} is not an ArtMiner project ({reason})") from err
    set_max_pixels(project_max_pixels(store))  # decoding obeys the project's bomb guard too
    return store, ProjectPaths(path.resolve())


def active_model_id(store: Store) -> str:
    """The project's active model, registering the pretrained default on first use."""
    active = store.active_model()
    if active is not None:
        return active.model_id
    if store.get_model(DEFAULT_MODEL) is None:
        store.add_model(ModelRef(DEFAULT_MODEL, DEFAULT_MODEL))
    store.set_active_model(DEFAULT_MODEL)
    return DEFAULT_MODEL


def make_active(store: Store, model_id: str, *, actor: User | None = None) -> None:
    """Make ``model_id`` the project's active model (admins only when an actor is given)."""
    require(actor, "set_active_model")
    store.set_active_model(model_id)


def load_model(store: Store, model: str | None = None, device: str = "auto") -> Backbone:
    """Build a project model by id (a checkpoint's path comes from the store), a registry
    name, or a checkpoint path; ``None`` means the active model. Registers new ones."""
    model_id = model or active_model_id(store)
    version = store.get_model(model_id)
    source = version.ref.checkpoint if version is not None and version.ref.checkpoint else model_id
    backbone = create_backbone(source).to(resolve_device(device))
    if store.get_model(backbone.model_id) is None:
        store.add_model(backbone.ref)
    return backbone
