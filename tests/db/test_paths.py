"""Files under the project's folder are stored relative to it: a project folder can move."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb

from db.records import ImageRecord
from db.store import Store
from engine.types import ModelRef
from tests.db.test_migrations import _write_v1


def _raw(path: Path, sql: str) -> list[tuple]:
    conn = duckdb.connect(str(path), read_only=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_paths_under_the_folder_are_relative_and_follow_a_copy(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    (root / "images").mkdir(parents=True)
    project = root / "artminer.duckdb"
    with Store(project) as store:
        store.add_images([ImageRecord("inside", "1", str(root / "images" / "a.jpg"), 10, 10),
                          ImageRecord("outside", "2", str(tmp_path / "b.jpg"), 10, 10),
                          ImageRecord("remote", "3", "https://example.org/c.jpg", 10, 10)])
        store.add_model(ModelRef("m", "m", checkpoint=str(root / "artminer-data" / "m.pt")))
        store.attach_annotations(root / "gt.json", "artminer")
    assert dict(_raw(project, "SELECT image_id, path FROM images")) == {
        "inside": "images/a.jpg", "outside": str(tmp_path / "b.jpg"),
        "remote": "https://example.org/c.jpg"}
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    with Store(copy / "artminer.duckdb") as store:
        assert store.get_image("inside").path == str(copy / "images" / "a.jpg")
        assert store.get_image("outside").path == str(tmp_path / "b.jpg")
        assert store.get_image("remote").path == "https://example.org/c.jpg"
        assert store.get_model("m").ref.checkpoint == str(copy / "artminer-data" / "m.pt")
        assert [a.path for a in store.list_annotations()] == [str(copy / "gt.json")]


def test_upgrade_makes_old_absolute_paths_under_the_folder_relative(tmp_path: Path) -> None:
    old = tmp_path / "old.duckdb"
    _write_v1(old)
    conn = duckdb.connect(str(old))
    conn.execute("INSERT INTO images (image_id, sha256, path, width, height, source, added) "
                 "VALUES ('dddd', 'dddd', ?, 10, 10, 'folder', now())", [str(tmp_path / "im" / "d.jpg")])
    conn.close()
    Store(old).close()
    assert dict(_raw(old, "SELECT image_id, path FROM images WHERE image_id IN ('aaaa', 'dddd')")) == {
        "aaaa": "/a.jpg", "dddd": "im/d.jpg"}
    assert Store(old).get_image("dddd").path == str(tmp_path / "im" / "d.jpg")


def test_in_memory_store_keeps_paths_as_given() -> None:
    store = Store(":memory:")
    store.add_images([ImageRecord("x", "1", "rel/x.jpg", 10, 10)])
    assert store.get_image("x").path == "rel/x.jpg"
