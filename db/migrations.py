"""Schema version of the project file and the ordered steps that upgrade old files.

``schema.sql`` is the whole current schema, written idempotently. A migration changes
tables that already exist in an older file (new columns, backfills); after the
migrations, ``schema.sql`` adds whatever tables and views the old file lacked. Each
step runs in its own transaction and records its version, so an interrupted upgrade
resumes where it stopped.

To change the schema: edit ``schema.sql``, add a function to ``MIGRATIONS`` under the
next version number, bump ``SCHEMA_VERSION``, and extend ``tests/db/test_migrations.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from importlib import resources

import duckdb

from db.records import parse_year

SCHEMA_VERSION = 7


class SchemaVersionError(RuntimeError):
    """The file was written by a newer ArtMiner, or is not an ArtMiner project."""


def _add_image_year(cur: duckdb.DuckDBPyConnection) -> None:
    """v2: images get a sortable ``year`` parsed from their free-text date."""
    cur.execute("ALTER TABLE images ADD COLUMN IF NOT EXISTS year INTEGER")
    rows = cur.execute("SELECT image_id, date FROM images WHERE date IS NOT NULL").fetchall()
    pairs = [(parse_year(date), image_id) for image_id, date in rows]
    pairs = [p for p in pairs if p[0] is not None]
    if pairs:
        cur.executemany("UPDATE images SET year = ? WHERE image_id = ?", pairs)


def _add_verdict_geometry(cur: duckdb.DuckDBPyConnection) -> None:
    """v3: verdicts keep the geometry the expert saw; old ones get the link's geometry.

    This is the only write to existing verdict rows ever made, and it fills a column
    that did not exist when they were written.
    """
    cur.execute("ALTER TABLE verdicts ADD COLUMN IF NOT EXISTS geometry_json VARCHAR")
    rows = cur.execute(
        """SELECT v.verdict_id, l.box_a, l.box_b, l.affine
           FROM verdicts v JOIN links l ON v.target_kind = 'link' AND v.target_id = l.link_id
           WHERE v.verdict <> 'revoke' AND v.geometry_json IS NULL"""
    ).fetchall()
    updates = [
        (json.dumps({"box_a": a, "box_b": b, "affine": [aff[:3], aff[3:]]}), vid)
        for vid, a, b, aff in rows
    ]
    if updates:
        cur.executemany("UPDATE verdicts SET geometry_json = ? WHERE verdict_id = ?", updates)


def _add_verdict_origin_and_role(cur: duckdb.DuckDBPyConnection) -> None:
    """v4 (issue 13, team review): verdicts get an origin and a role.

    ``origin_verdict``: the cluster verdict a link verdict was derived from (NULL for a
    verdict given on the link itself). ``role``: ``review`` (every old row) or
    ``adjudication`` (settles a disagreement between reviewers). ``direction``: who
    copied whom, as the expert judged it on a confirmed link. And paths under the
    project's folder (images, checkpoints, annotation files) become relative to it.
    """
    cur.execute("ALTER TABLE verdicts ADD COLUMN IF NOT EXISTS origin_verdict BIGINT")
    cur.execute("ALTER TABLE verdicts ADD COLUMN IF NOT EXISTS role VARCHAR DEFAULT 'review'")
    cur.execute("UPDATE verdicts SET role = 'review' WHERE role IS NULL")
    cur.execute("ALTER TABLE verdicts ADD COLUMN IF NOT EXISTS direction VARCHAR")
    _relative_paths(cur)


def relative_to_folder(path: str, folder: str) -> str:
    """``path`` relative to ``folder`` when it lies inside it, else unchanged."""
    full, folder = os.path.abspath(path), os.path.abspath(folder)
    try:
        inside = os.path.commonpath([full, folder]) == folder
    except ValueError:  # different drives (Windows)
        return path
    return os.path.relpath(full, folder) if inside else path


def _relative_paths(cur: duckdb.DuckDBPyConnection) -> None:
    """Files under the project's folder are stored relative to it from v4 on (the folder can move)."""
    found = cur.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
                        ).fetchone()
    if not found or not found[0]:
        return  # in memory
    folder = os.path.dirname(os.path.abspath(found[0]))
    for table, column, key in (("images", "path", "image_id"), ("models", "checkpoint", "model_id"),
                               ("annotation_files", "path", "path")):
        rows = cur.execute(f"SELECT {key}, {column} FROM {table} WHERE {column} IS NOT NULL").fetchall()
        moved = [(relative_to_folder(p, folder), k) for k, p in rows
                 if "://" not in p and os.path.isabs(p) and relative_to_folder(p, folder) != p]
        if moved:
            cur.executemany(f"UPDATE {table} SET {column} = ? WHERE {key} = ?", moved)


def _add_link_mirrored(cur: duckdb.DuckDBPyConnection) -> None:
    """v5 (issue 14): links say whether B holds a mirror image of A's region; links
    found before mirror-aware verification were all direct."""
    cur.execute("ALTER TABLE links ADD COLUMN IF NOT EXISTS mirrored BOOLEAN DEFAULT false")
    cur.execute("UPDATE links SET mirrored = false WHERE mirrored IS NULL")


def _add_link_inliers(cur: duckdb.DuckDBPyConnection) -> None:
    """v6 (issue 13): links keep their inlier correspondences in a new table,
    ``link_inliers``, which ``schema.sql`` creates; nothing to change in existing tables.
    Links found before have no points: the review page asks to re-run discovery."""


def _add_link_agreement(cur: duckdb.DuckDBPyConnection) -> None:
    """v7 (issue 9): links keep how well their regions agree once finely aligned
    (``hitl/agreement.py``); links found before were not measured (NULL)."""
    cur.execute("ALTER TABLE links ADD COLUMN IF NOT EXISTS agreement DOUBLE")


MIGRATIONS: dict[int, Callable[[duckdb.DuckDBPyConnection], None]] = {
    2: _add_image_year,
    3: _add_verdict_geometry,
    4: _add_verdict_origin_and_role,  # issue 13
    5: _add_link_mirrored,  # issue 14
    6: _add_link_inliers,  # issue 13
    7: _add_link_agreement,  # issue 9
}


def schema_sql() -> str:
    """The current schema script shipped beside this module."""
    return resources.files("db").joinpath("schema.sql").read_text(encoding="utf-8")


def file_version(cur: duckdb.DuckDBPyConnection) -> int | None:
    """The file's schema version; 0 for an empty database; None if not a project."""
    tables = {r[0] for r in cur.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if not tables:
        return 0
    if "schema_version" not in tables:
        return None
    found = cur.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    return int(found) if found is not None else None


def prepare(cur: duckdb.DuckDBPyConnection, where: str) -> int:
    """Check the file's schema and bring it to `SCHEMA_VERSION`; return the old version.

    Raises:
        SchemaVersionError: newer file, or a DuckDB file that is not an ArtMiner project.
    """
    version = file_version(cur)
    if version is None:
        raise SchemaVersionError(
            f"{where} is a DuckDB file but not an ArtMiner project (no schema_version table)"
        )
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{where} has schema version {version}, newer than this ArtMiner understands "
            f"(up to {SCHEMA_VERSION}); upgrade artminer-hitl to open it"
        )
    if version == SCHEMA_VERSION:
        return version
    if version > 0:  # a new file gets the current schema directly
        for step in range(version + 1, SCHEMA_VERSION + 1):
            in_transaction(cur, partial(_migrate, step))
    in_transaction(cur, _create_current)
    return version


def _migrate(step: int, cur: duckdb.DuckDBPyConnection) -> None:
    MIGRATIONS[step](cur)
    _record(cur, step)


def _create_current(cur: duckdb.DuckDBPyConnection) -> None:
    cur.execute(schema_sql())
    _record(cur, SCHEMA_VERSION)


def _record(cur: duckdb.DuckDBPyConnection, version: int) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    current = cur.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    if current is None or current < version:
        cur.execute("INSERT INTO schema_version VALUES (?, ?)", [version, now])


def in_transaction(cur: duckdb.DuckDBPyConnection, work: Callable):
    """Run ``work(cur)`` in one transaction, rolled back on any error; returns its result."""
    cur.execute("BEGIN TRANSACTION")
    try:
        result = work(cur)
        cur.execute("COMMIT")
        return result
    except BaseException:
        try:
            cur.execute("ROLLBACK")
        except duckdb.Error:
            pass  # a failed COMMIT has already rolled back
        raise
