"""Opening older project files upgrades them; newer or foreign files are clear errors."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from db import SCHEMA_VERSION, SchemaVersionError, Store
from db.migrations import MIGRATIONS, schema_sql


def _columns(path: Path) -> dict[str, list[tuple[str, str]]]:
    conn = duckdb.connect(str(path))
    try:
        rows = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "ORDER BY table_name, ordinal_position").fetchall()
    finally:
        conn.close()
    found: dict[str, list[tuple[str, str]]] = {}
    for table, column, dtype in rows:
        found.setdefault(table, []).append((column, dtype))
    return found


def _write_v1(path: Path) -> None:
    """A version-1 file as ArtMiner 0.1 wrote it: no images.year, no verdict geometry,
    no links.mirrored, no links.agreement."""
    conn = duckdb.connect(str(path))
    conn.execute(schema_sql())
    conn.execute("DROP VIEW link_status; DROP VIEW link_disputes; DROP VIEW reviewer_verdicts; "
                 "DROP VIEW current_verdicts; DROP VIEW live_verdicts; DROP TABLE review_plan")
    conn.execute("ALTER TABLE images DROP COLUMN year")
    conn.execute("ALTER TABLE verdicts DROP COLUMN geometry_json")
    conn.execute("ALTER TABLE verdicts DROP COLUMN origin_verdict")
    conn.execute("ALTER TABLE verdicts DROP COLUMN role")
    conn.execute("ALTER TABLE verdicts DROP COLUMN direction")
    conn.execute("ALTER TABLE links DROP COLUMN mirrored")
    conn.execute("ALTER TABLE links DROP COLUMN agreement")
    conn.execute("DELETE FROM schema_version; INSERT INTO schema_version VALUES (1, now())")
    conn.execute(
        "INSERT INTO images (image_id, sha256, path, width, height, date, source, added) VALUES "
        "('aaaa', 'aaaa', '/a.jpg', 10, 10, 'c. 1605-1610', 'folder', now()), "
        "('bbbb', 'bbbb', '/b.jpg', 10, 10, '1620s', 'folder', now()), "
        "('cccc', 'cccc', '/c.jpg', 10, 10, 'undated', 'folder', now())")
    conn.execute("INSERT INTO models VALUES ('m', 'effnet-lite0', NULL, NULL, NULL, NULL, '{}', now())")
    conn.execute("INSERT INTO runs VALUES (nextval('run_seq'), 'm', 'discovery', '{}', 'done', now(), now(), NULL)")
    conn.execute("INSERT INTO links VALUES (nextval('link_seq'), 1, 'm', 'aaaa', 'bbbb', "
                 "[0, 0, 4, 4], [1, 1, 5, 5], [1, 0, 1, 0, 1, 1], 0.9, 7)")
    conn.execute("INSERT INTO verdicts (target_kind, target_id, verdict, annotator, created) "
                 "VALUES ('link', 1, 'confirm', 'old', now())")
    conn.close()


def test_new_file_has_current_version(tmp_path: Path) -> None:
    Store(tmp_path / "p.duckdb").close()
    conn = duckdb.connect(str(tmp_path / "p.duckdb"))
    assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_v1_file_is_upgraded_in_order_with_backfills(tmp_path: Path) -> None:
    old = tmp_path / "old.duckdb"
    _write_v1(old)
    store = Store(old)
    assert {im.image_id: im.year for im in store.list_images()} == {
        "aaaa": 1605, "bbbb": 1620, "cccc": None}
    (verdict,) = store.link_history(1)
    assert verdict.geometry == {"box_a": [0, 0, 4, 4], "box_b": [1, 1, 5, 5],
                                "affine": [[1, 0, 1], [0, 1, 1]]}
    assert store.link_status(1) == "confirm"
    assert store.get_link(1).match.mirrored is False  # v4: old links were all direct
    assert store.get_link(1).match.inliers == ()  # v6: old links have no stored points
    assert store.get_link(1).match.agreement is None  # v7: old links were not measured
    store.close()
    conn = duckdb.connect(str(old))
    versions = [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()]
    conn.close()
    assert versions == [1, *sorted(MIGRATIONS)]
    assert versions[-1] == SCHEMA_VERSION


def test_upgraded_file_matches_a_new_one(tmp_path: Path) -> None:
    _write_v1(tmp_path / "old.duckdb")
    Store(tmp_path / "old.duckdb").close()
    Store(tmp_path / "new.duckdb").close()
    old, new = _columns(tmp_path / "old.duckdb"), _columns(tmp_path / "new.duckdb")
    assert old.keys() == new.keys()
    for table in new:  # same columns; an added column may sit at the end
        assert sorted(old[table]) == sorted(new[table]), table


def test_newer_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "future.duckdb"
    Store(path).close()
    conn = duckdb.connect(str(path))
    conn.execute("INSERT INTO schema_version VALUES (?, now())", [SCHEMA_VERSION + 5])
    conn.close()
    with pytest.raises(SchemaVersionError, match=r"newer than this ArtMiner.*upgrade"):
        Store(path)


def test_foreign_duckdb_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.duckdb"
    conn = duckdb.connect(str(path))
    conn.execute("CREATE TABLE sales (x INTEGER)")
    conn.close()
    with pytest.raises(SchemaVersionError, match="not an ArtMiner project"):
        Store(path)


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Store(tmp_path / "no" / "such" / "p.duckdb")
