"""The project store: the one class that speaks SQL to a collection's DuckDB file.

Every public method is one short transaction: it opens the file if this process does
not hold it already, does its work, and lets the file go when no other operation of the
process needs it (see `db.connection`), so the app, a discovery run and a training
round can share one project file. Methods take and return typed records
(`engine.types`, `db.records`), never rows.

The verdict log is append-only: there is no method that updates or deletes a verdict.
``undo_verdict`` appends a revocation; a link's status is the latest live verdict.

Usage::

    store = Store("artminer.duckdb")          # or Store(":memory:") in tests
    store.add_model(ModelRef("effnet-lite0", "effnet-lite0"))
    run = store.start_run("effnet-lite0", {"k": 20})
    ids = store.add_links(run, matches, verified_pairs=[("a", "b")])
    store.add_verdict(ids[0], "confirm", annotator="mk", note="same dog")
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import duckdb

from db import migrations
from db.connection import BUSY_TIMEOUT_S, ConnectionGate, StoreBusyError, backoff, is_lock_error
from db.migrations import relative_to_folder
from db.records import (
    DIRECTIONS,
    DISPUTED,
    REVIEW,
    REVOKE,
    ROLES,
    TARGET_KINDS,
    UNREVIEWED,
    VERDICTS,
    AnnotationFile,
    ImageRecord,
    Link,
    LinkMaskRecord,
    MapPoint,
    ModelVersion,
    RegionRecord,
    Run,
    StoredCluster,
    TrainingRound,
    Verdict,
)
from engine.types import Box, Cluster, ModelRef, PairMatch, Region

T = TypeVar("T")

_IMAGE_COLS = (
    "image_id, sha256, path, width, height, title, artist, date, year, medium, collection, "
    "extra_json, source, iiif_canvas, iiif_manifest, source_url, canvas_width, canvas_height, added"
)
_LINK_COLS = "link_id, run_id, model_id, image_a, image_b, box_a, box_b, affine, score, n_inliers, mirrored, agreement"
_VERDICT_COLS = (
    "v.verdict_id, v.target_kind, v.target_id, v.verdict, v.annotator, v.created, v.note, "
    "v.revokes, v.geometry_json, r.verdict_id AS revoked_by, v.origin_verdict, v.role, v.direction"
)
_VERDICT_FROM = (
    "verdicts v LEFT JOIN verdicts r ON r.verdict = 'revoke' AND r.revokes = v.verdict_id"
)
_REGION_COLS = (
    "region_id, image_id, box, label, source, run_id, cluster_id, link_id, attributes_json"
)
_RUN_COLS = "run_id, model_id, kind, params_json, status, started, finished, error"
_ROUND_COLS = (
    "round_id, parent_model, status, params_json, started, new_model, metrics_json, "
    "log_path, finished, error"
)
_RUN_STATUSES = ("running", "done", "failed")
_SEQUENCES = ("run_seq", "link_seq", "cluster_seq", "region_seq", "round_seq", "verdict_seq")


class Store:
    """A collection's project file.

    Args:
        path: the ``.duckdb`` file (created with the current schema if missing; an older
            file is upgraded), or ``":memory:"`` for a throwaway project.
        busy_timeout: seconds an operation waits for another process holding the
            file before raising `StoreBusyError`.

    Raises:
        SchemaVersionError: the file is newer than this code, or not a project.
        FileNotFoundError: the file's folder does not exist.
    """

    def __init__(self, path: str | os.PathLike = "artminer.duckdb",
                 busy_timeout: float = BUSY_TIMEOUT_S) -> None:
        if str(path) == ":memory:":
            self.path = ":memory:"
            self._gate = ConnectionGate(None, _prepare(":memory:"), busy_timeout)
        else:
            self.path = os.path.abspath(os.fspath(path))
            folder = os.path.dirname(self.path)
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"folder of project file {self.path} does not exist")
            self._gate = _gate_for(self.path, busy_timeout)
        self._busy_timeout = busy_timeout
        self._read(lambda cur: None)  # surface schema errors now, not at first use

    def close(self) -> None:
        """Release the file now if idle (an in-memory project is discarded)."""
        self._gate.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.path!r})"

    # ------------------------------------------------------------------ file paths

    def _stored_path(self, path: str | None) -> str | None:
        """A file under the project's folder is stored relative to it, so the folder can
        be moved, copied or shared; anything else (URLs, other folders) as given."""
        if not path or self.path == ":memory:" or "://" in path:
            return path
        return relative_to_folder(path, os.path.dirname(self.path))

    def _full_path(self, stored: str | None) -> str | None:
        """The absolute path of a stored one (relative ones are under the project's folder)."""
        if not stored or self.path == ":memory:" or "://" in stored or os.path.isabs(stored):
            return stored
        return os.path.join(os.path.dirname(self.path), stored)

    def _image(self, row: tuple) -> ImageRecord:
        image = _image(row)
        return replace(image, path=self._full_path(image.path))

    def _model(self, row: tuple) -> ModelVersion:
        version = _model(row)
        if not version.ref.checkpoint:
            return version
        return replace(version, ref=replace(version.ref, checkpoint=self._full_path(version.ref.checkpoint)))

    # ------------------------------------------------------------------ transactions

    def _read(self, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        return self._transact(work, write=False)

    def _write(self, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        return self._transact(work, write=True)

    def _transact(self, work: Callable[[duckdb.DuckDBPyConnection], T], write: bool) -> T:
        """Run ``work`` in one transaction, retrying lock and conflict errors."""
        deadline = time.monotonic() + self._busy_timeout
        attempt = 0
        while True:
            try:
                with self._gate.cursor(write, self._busy_timeout) as cur:
                    return _in_transaction(cur, work)
            except duckdb.Error as err:
                if not is_lock_error(err):
                    raise
                if time.monotonic() > deadline:
                    raise StoreBusyError(f"{self.path}: gave up after retries: {err}") from err
                time.sleep(backoff(attempt))
                attempt += 1

    # ------------------------------------------------------------------ settings

    def set_setting(self, key: str, value: str | None) -> None:
        """Store a project-wide setting (e.g. ``active_model``)."""
        self._write(lambda cur: cur.execute(
            "INSERT OR REPLACE INTO settings VALUES (?, ?)", [key, value]))

    def get_setting(self, key: str, default: str | None = None) -> str | None:
        row = self._read(lambda cur: cur.execute(
            "SELECT value FROM settings WHERE key = ?", [key]).fetchone())
        return row[0] if row else default

    # ------------------------------------------------------------------ images

    def add_images(self, images: Iterable[ImageRecord]) -> tuple[list[str], list[str]]:
        """Add images not yet in the project (by content hash).

        Returns:
            ``(added_ids, duplicate_ids)``: ids inserted now, and ids that were already
            present (or repeated within ``images``), in input order.
        """
        images = list(images)

        def work(cur: duckdb.DuckDBPyConnection) -> tuple[list[str], list[str]]:
            ids = [im.image_id for im in images]
            present = {r[0] for r in cur.execute(
                "SELECT image_id FROM images WHERE image_id IN (SELECT unnest(?::VARCHAR[]))",
                [ids]).fetchall()}
            fresh, dupes = [], []
            for im in images:
                (dupes if im.image_id in present else fresh).append(im)
                present.add(im.image_id)
            now = _now()
            _insert(cur, "images", {
                "image_id": ("VARCHAR", [im.image_id for im in fresh]),
                "sha256": ("VARCHAR", [im.sha256 for im in fresh]),
                "path": ("VARCHAR", [self._stored_path(im.path) for im in fresh]),
                "width": ("INTEGER", [im.width for im in fresh]),
                "height": ("INTEGER", [im.height for im in fresh]),
                "title": ("VARCHAR", [im.title for im in fresh]),
                "artist": ("VARCHAR", [im.artist for im in fresh]),
                "date": ("VARCHAR", [im.date for im in fresh]),
                "year": ("INTEGER", [im.year for im in fresh]),
                "medium": ("VARCHAR", [im.medium for im in fresh]),
                "collection": ("VARCHAR", [im.collection for im in fresh]),
                "extra_json": ("VARCHAR", [_dumps(im.extra) for im in fresh]),
                "source": ("VARCHAR", [im.source for im in fresh]),
                "iiif_canvas": ("VARCHAR", [im.iiif_canvas for im in fresh]),
                "iiif_manifest": ("VARCHAR", [im.iiif_manifest for im in fresh]),
                "source_url": ("VARCHAR", [im.source_url for im in fresh]),
                "canvas_width": ("INTEGER", [im.canvas_width for im in fresh]),
                "canvas_height": ("INTEGER", [im.canvas_height for im in fresh]),
                "added": ("TIMESTAMP", [now] * len(fresh)),
            })
            return [im.image_id for im in fresh], [im.image_id for im in dupes]

        return self._write(work)

    def update_image_metadata(self, images: Iterable[ImageRecord]) -> int:
        """Overwrite descriptive metadata of existing images with the non-empty fields given.

        Title, artist, date, year, medium and collection are replaced where the record
        has a value; ``extra`` keys are merged. Paths, sizes and hashes never change.
        Returns the number of images found and updated.
        """
        images = list(images)

        def work(cur: duckdb.DuckDBPyConnection) -> int:
            ids = [im.image_id for im in images]
            old = dict(cur.execute(
                "SELECT image_id, extra_json FROM images "
                "WHERE image_id IN (SELECT unnest(?::VARCHAR[]))", [ids]).fetchall())
            rows = [im for im in images if im.image_id in old]
            if rows:
                cur.execute(
                    """UPDATE images SET title = coalesce(u.title, images.title),
                       artist = coalesce(u.artist, images.artist),
                       date = coalesce(u.date, images.date), year = coalesce(u.year, images.year),
                       medium = coalesce(u.medium, images.medium),
                       collection = coalesce(u.collection, images.collection),
                       extra_json = u.extra_json
                       FROM (SELECT unnest(?::VARCHAR[]) AS image_id, unnest(?::VARCHAR[]) AS title,
                             unnest(?::VARCHAR[]) AS artist, unnest(?::VARCHAR[]) AS date,
                             unnest(?::INTEGER[]) AS year, unnest(?::VARCHAR[]) AS medium,
                             unnest(?::VARCHAR[]) AS collection,
                             unnest(?::VARCHAR[]) AS extra_json) AS u
                       WHERE images.image_id = u.image_id""",
                    [[im.image_id for im in rows], [im.title for im in rows],
                     [im.artist for im in rows], [im.date for im in rows],
                     [im.year for im in rows], [im.medium for im in rows],
                     [im.collection for im in rows],
                     [_dumps({**_loads(old[im.image_id]), **im.extra}) for im in rows]])
            return len(rows)

        return self._write(work)

    def get_image(self, image_id: str) -> ImageRecord | None:
        rows = self._read(lambda cur: cur.execute(
            f"SELECT {_IMAGE_COLS} FROM images WHERE image_id = ?", [image_id]).fetchall())
        return self._image(rows[0]) if rows else None

    def list_images(self, collection: str | None = None, source: str | None = None,
                    image_ids: Sequence[str] | None = None) -> list[ImageRecord]:
        """Images ordered by path; optionally of one collection, source, or id list."""
        where, args = _where({"collection = ?": collection, "source = ?": source,
                              "image_id IN (SELECT unnest(?::VARCHAR[]))":
                              list(image_ids) if image_ids is not None else None})
        rows = self._read(lambda cur: cur.execute(
            f"SELECT {_IMAGE_COLS} FROM images {where} ORDER BY path, image_id", args).fetchall())
        return [self._image(r) for r in rows]

    def count_images(self) -> int:
        return self._read(lambda cur: cur.execute("SELECT count(*) FROM images").fetchone()[0])

    # ------------------------------------------------------------------ models

    def add_model(self, ref: ModelRef, checkpoint_sha256: str | None = None,
                  round: int | None = None, config: Mapping[str, Any] | None = None,
                  ) -> ModelVersion:
        """Record a model version; recording the same one again returns it unchanged.

        Raises:
            ValueError: ``ref.model_id`` exists with another backbone or checkpoint hash,
                or its parent is not in the project.
        """

        def work(cur: duckdb.DuckDBPyConnection) -> None:
            row = cur.execute("SELECT backbone, checkpoint_sha256 FROM models WHERE model_id = ?",
                              [ref.model_id]).fetchone()
            if row is not None:
                if row[0] != ref.backbone or (checkpoint_sha256 and row[1]
                                              and row[1] != checkpoint_sha256):
                    raise ValueError(f"model {ref.model_id!r} is already recorded with "
                                     f"backbone {row[0]!r}, checkpoint hash {row[1]!r}")
                return
            if ref.parent and cur.execute("SELECT 1 FROM models WHERE model_id = ?",
                                          [ref.parent]).fetchone() is None:
                raise ValueError(f"parent model {ref.parent!r} of {ref.model_id!r} is not "
                                 f"in the project; add it first")
            cur.execute("INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [ref.model_id, ref.backbone, ref.parent, self._stored_path(ref.checkpoint),
                         checkpoint_sha256, round, _dumps(config or {}), _now()])

        self._write(work)
        return self.get_model(ref.model_id)

    def get_model(self, model_id: str) -> ModelVersion | None:
        rows = self._read(lambda cur: cur.execute(
            "SELECT model_id, backbone, checkpoint, parent, checkpoint_sha256, round, "
            "config_json, created FROM models WHERE model_id = ?", [model_id]).fetchall())
        return self._model(rows[0]) if rows else None

    def list_models(self) -> list[ModelVersion]:
        """All model versions, oldest first."""
        rows = self._read(lambda cur: cur.execute(
            "SELECT model_id, backbone, checkpoint, parent, checkpoint_sha256, round, "
            "config_json, created FROM models ORDER BY created, model_id").fetchall())
        return [self._model(r) for r in rows]

    def set_active_model(self, model_id: str) -> None:
        """Make ``model_id`` the model the app and the next run use."""

        def work(cur: duckdb.DuckDBPyConnection) -> None:
            if cur.execute("SELECT 1 FROM models WHERE model_id = ?", [model_id]).fetchone() is None:
                raise ValueError(f"model {model_id!r} is not in the project")
            cur.execute("INSERT OR REPLACE INTO settings VALUES ('active_model', ?)", [model_id])

        self._write(work)

    def active_model(self) -> ModelVersion | None:
        model_id = self.get_setting("active_model")
        return self.get_model(model_id) if model_id else None

    # ------------------------------------------------------------------ runs

    def start_run(self, model_id: str, params: Mapping[str, Any],
                  kind: str = "discovery") -> int:
        """Record the start of a run with ``model_id``; returns its ``run_id``."""

        def work(cur: duckdb.DuckDBPyConnection) -> int:
            _require(cur, "models", "model_id", model_id, "model")
            return cur.execute(
                "INSERT INTO runs (model_id, kind, params_json, status, started) "
                "VALUES (?, ?, ?, 'running', ?) RETURNING run_id",
                [model_id, kind, _dumps(params), _now()]).fetchone()[0]

        return self._write(work)

    def finish_run(self, run_id: int, status: str = "done", error: str | None = None) -> None:
        """Mark a run ``done`` or ``failed`` (with the error text)."""
        if status not in ("done", "failed"):
            raise ValueError(f"a run finishes 'done' or 'failed', not {status!r}")

        def work(cur: duckdb.DuckDBPyConnection) -> None:
            _require(cur, "runs", "run_id", run_id, "run")
            cur.execute("UPDATE runs SET status = ?, finished = ?, error = ? WHERE run_id = ?",
                        [status, _now(), error, run_id])

        self._write(work)

    def get_run(self, run_id: int) -> Run | None:
        rows = self._read(lambda cur: cur.execute(
            f"SELECT {_RUN_COLS} FROM runs WHERE run_id = ?", [run_id]).fetchall())
        return _run(rows[0]) if rows else None

    def list_runs(self, model_id: str | None = None, kind: str | None = None,
                  status: str | None = None) -> list[Run]:
        """Runs, oldest first, optionally filtered."""
        where, args = _where({"model_id = ?": model_id, "kind = ?": kind, "status = ?": status})
        rows = self._read(lambda cur: cur.execute(
            f"SELECT {_RUN_COLS} FROM runs {where} ORDER BY run_id", args).fetchall())
        return [_run(r) for r in rows]

    def resumable_run(self, model_id: str, params: Mapping[str, Any],
                      kind: str = "discovery") -> Run | None:
        """The latest unfinished (``running`` or ``failed``) run with these exact params.

        A ``running`` run may belong to a live process; the caller decides (e.g. by
        asking the user) whether it was killed.
        """
        rows = self._read(lambda cur: cur.execute(
            f"SELECT {_RUN_COLS} FROM runs WHERE model_id = ? AND kind = ? AND params_json = ? "
            "AND status IN ('running', 'failed') ORDER BY run_id DESC LIMIT 1",
            [model_id, kind, _dumps(params)]).fetchall())
        return _run(rows[0]) if rows else None

    def verified_pairs(self, model_id: str) -> set[tuple[str, str]]:
        """Image pairs ``(a, b)``, ``a < b``, already verified by ``model_id`` in any run."""
        rows = self._read(lambda cur: cur.execute(
            "SELECT image_a, image_b FROM verified_pairs WHERE model_id = ?",
            [model_id]).fetchall())
        return {(a, b) for a, b in rows}

    def mark_pairs_verified(self, run_id: int, pairs: Iterable[tuple[str, str]]) -> int:
        """Record pairs verified by run ``run_id`` that produced no links; returns count new."""
        pairs = list(pairs)
        return self._write(lambda cur: _mark_pairs(cur, run_id, _run_model(cur, run_id), pairs))

    # ------------------------------------------------------------------ links

    def add_links(self, run_id: int, matches: Sequence[PairMatch],
                  verified_pairs: Iterable[tuple[str, str]] = (), mark_verified: bool = True) -> list[int]:
        """Store matches found by run ``run_id``, and mark their pairs verified.

        ``mark_verified=False`` is for links that did not come from pair verification
        (a confirmed one-shot query hit): discovery must still verify their pairs.

        Links and ``verified_pairs`` (all pairs of this batch, with or without links)
        commit together, so a run killed between batches resumes without losing or
        doubling links. A pair's links are written only by the transaction that records
        the pair as verified: matches of a pair in ``verified_pairs`` that the model has
        already verified (another process got there first) are dropped, so two runs at
        once cannot double a link. Returns the new ``link_id`` per stored match, in order
        (every match when ``verified_pairs`` is empty).
        """
        pairs = list(verified_pairs)

        def work(cur: duckdb.DuckDBPyConnection) -> list[int]:
            model_id = _run_model(cur, run_id)
            done = _already_verified(cur, model_id, pairs)
            kept = [m for m in matches if (min(m.image_a, m.image_b),
                                           max(m.image_a, m.image_b)) not in done]
            return _insert_links(cur, run_id, model_id, kept, pairs, mark_verified)

        matches = list(matches)
        return self._write(work)

    def set_link_agreement(self, updates: Sequence[tuple[int, float, float]]) -> int:
        """Record the aligned agreement of links measured after they were stored, as
        (link_id, weighed score, agreement); returns how many. Only links without one are
        changed: an agreement, once measured, stays."""
        rows = [(float(score), float(agreement), int(link_id)) for link_id, score, agreement in updates]

        def work(cur: duckdb.DuckDBPyConnection) -> int:
            if rows:
                cur.executemany("UPDATE links SET score = ?, agreement = ? WHERE link_id = ? AND agreement IS NULL", rows)
            return len(rows)

        return self._write(work)

    def save_link_masks(self, masks: Sequence[LinkMaskRecord]) -> int:
        """Store (or replace) the shared-detail masks of links; returns how many."""
        masks = list(masks)

        def flat(polygon) -> list[float]:
            return [float(v) for point in polygon for v in point]

        def work(cur: duckdb.DuckDBPyConnection) -> int:
            ids = [m.link_id for m in masks]
            if ids:
                cur.execute(f"DELETE FROM link_masks WHERE link_id IN ({', '.join('?' * len(ids))})", ids)
            _insert(cur, "link_masks", {
                "link_id": ("BIGINT", ids),
                "polygon_a": ("DOUBLE[]", [flat(m.polygon_a) for m in masks]),
                "polygon_b": ("DOUBLE[]", [flat(m.polygon_b) for m in masks]),
                "refined": ("BOOLEAN", [bool(m.refined) for m in masks]),
                "created": ("TIMESTAMP", [_now()] * len(masks)),
            })
            return len(masks)

        return self._write(work)

    def link_masks(self, link_ids: Sequence[int] | None = None) -> dict[int, LinkMaskRecord]:
        """Stored masks by link id (all, or those of ``link_ids``)."""
        where, args = "", []
        if link_ids is not None:
            if not link_ids:
                return {}
            where, args = f"WHERE link_id IN ({', '.join('?' * len(link_ids))})", [int(i) for i in link_ids]
        rows = self._read(lambda cur: cur.execute(
            f"SELECT link_id, polygon_a, polygon_b, refined FROM link_masks {where}", args).fetchall())

        def points(flat) -> tuple[tuple[float, float], ...]:
            return tuple((flat[i], flat[i + 1]) for i in range(0, len(flat) - 1, 2))

        return {r[0]: LinkMaskRecord(r[0], points(r[1]), points(r[2]), r[3]) for r in rows}

    def get_link(self, link_id: int) -> Link | None:
        """One link with its inlier points (empty for links stored before schema v6)."""
        found = self.list_links(link_ids=[link_id], inliers=True)
        return found[0] if found else None

    def list_links(self, *, run_id: int | None = None, model_id: str | None = None,
                   status: str | Sequence[str] | None = None, image_id: str | None = None,
                   min_score: float | None = None, link_ids: Sequence[int] | None = None,
                   order: str = "score", limit: int | None = None, offset: int = 0,
                   inliers: bool = False) -> list[Link]:
        """Links with their current status.

        Args:
            status: one of ``confirm``/``reject``/``unsure``/``unreviewed`` or a list.
            image_id: links touching this image (either side).
            order: ``score`` (best first) or ``link_id``.
            inliers: read each link's inlier points too (``PairMatch.inliers``); off by
                default, since queues and counts read thousands of links and need none.
        """
        where, args = _link_filter(run_id, model_id, status, image_id, min_score, link_ids)
        if order not in ("score", "link_id"):
            raise ValueError(f"order must be 'score' or 'link_id', not {order!r}")
        order_by = "score DESC, link_id" if order == "score" else "link_id"
        page = f"LIMIT {int(limit)} OFFSET {int(offset)}" if limit is not None else ""
        points, join = ("p.points", "LEFT JOIN link_inliers p USING (link_id)") if inliers else ("NULL", "")
        rows = self._read(lambda cur: cur.execute(
            f"SELECT {_LINK_COLS}, status, {points} FROM link_status {join} {where} ORDER BY {order_by} {page}",
            args).fetchall())
        return [_link(r) for r in rows]

    def count_links(self, *, run_id: int | None = None, model_id: str | None = None,
                    status: str | Sequence[str] | None = None, image_id: str | None = None,
                    min_score: float | None = None) -> int:
        where, args = _link_filter(run_id, model_id, status, image_id, min_score, None)
        return self._read(lambda cur: cur.execute(
            f"SELECT count(*) FROM link_status {where}", args).fetchone()[0])

    def status_counts(self, model_id: str | None = None,
                      since: datetime | None = None) -> dict[str, int]:
        """Number of links per current status (every status present, zeros included).

        The one count of the app: the sidebar, the review page and the training page all
        read it, so they cannot disagree. ``since``: judged links count only if their
        verdict in force was given at or after it (unreviewed ones always count).
        """
        where, args = _where({"model_id = ?": model_id,
                              "(status = 'unreviewed' OR verdict_at >= ?)":
                              _db_time(since) if since else None})
        rows = self._read(lambda cur: cur.execute(
            f"SELECT status, count(*) FROM link_status {where} GROUP BY status", args).fetchall())
        counts = dict.fromkeys((*VERDICTS, UNREVIEWED, DISPUTED), 0)
        counts.update(dict(rows))
        return counts

    # ------------------------------------------------------------------ verdicts

    def add_verdict(self, target_id: int, verdict: str, annotator: str, *,
                    note: str | None = None, geometry: Mapping[str, Any] | None = None,
                    target_kind: str = "link", created: datetime | None = None,
                    role: str = REVIEW, direction: str | None = None) -> int:
        """Append an expert's verdict on a link or cluster; returns its ``verdict_id``.

        Args:
            verdict: ``confirm``, ``reject`` or ``unsure``.
            geometry: the boxes and affine as shown; defaults to the link's stored ones.
            created: when it was given (UTC); now by default. Set only when importing.
            role: ``review``, or ``adjudication`` for a ruling that settles reviewers'
                disagreement on a link (it is in force over theirs, which stay in the log).
            direction: who copied whom (`db.records.DIRECTIONS`), for a link.

        Raises:
            ValueError: unknown verdict, kind, role or target, or an empty annotator name.
        """
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        if direction is not None and direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, not {verdict!r}")
        if target_kind not in TARGET_KINDS:
            raise ValueError(f"target_kind must be one of {TARGET_KINDS}, not {target_kind!r}")
        if not annotator or not annotator.strip():
            raise ValueError("a verdict needs the annotator's name")

        def work(cur: duckdb.DuckDBPyConnection) -> int:
            shown = geometry
            if target_kind == "link":
                row = cur.execute("SELECT box_a, box_b, affine FROM links WHERE link_id = ?",
                                  [target_id]).fetchone()
                if row is None:
                    raise ValueError(f"link {target_id} is not in the project")
                shown = shown or {"box_a": row[0], "box_b": row[1], "affine": _affine(row[2])}
            else:
                _require(cur, "clusters", "cluster_id", target_id, "cluster")
            return cur.execute(
                "INSERT INTO verdicts (target_kind, target_id, verdict, annotator, created, note, "
                "geometry_json, role, direction) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING verdict_id",
                [target_kind, target_id, verdict, annotator.strip(), _db_time(created), note,
                 _dumps(shown) if shown is not None else None, role, direction]).fetchone()[0]

        return self._write(work)

    def add_cluster_verdict(self, cluster_id: int, verdict: str, annotator: str, *,
                            note: str | None = None) -> tuple[int, list[int]]:
        """A verdict on a cluster *and* on its member links still unreviewed, in one transaction.

        Each member link gets a link verdict of its own whose ``origin_verdict`` is the
        cluster verdict, so the links leave the review queue and count like any other;
        links someone already judged one by one keep that judgement.

        Returns:
            ``(cluster_verdict_id, [link verdict ids])``.
        """
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, not {verdict!r}")
        if not annotator or not annotator.strip():
            raise ValueError("a verdict needs the annotator's name")
        who, now = annotator.strip(), _now()

        def work(cur: duckdb.DuckDBPyConnection) -> tuple[int, list[int]]:
            _require(cur, "clusters", "cluster_id", cluster_id, "cluster")
            head = cur.execute(
                "INSERT INTO verdicts (target_kind, target_id, verdict, annotator, created, note, "
                "role) VALUES ('cluster', ?, ?, ?, ?, ?, 'review') RETURNING verdict_id",
                [cluster_id, verdict, who, now, note]).fetchone()[0]
            links = cur.execute(
                "SELECT link_id, box_a, box_b, affine FROM link_status WHERE status = 'unreviewed' "
                "AND link_id IN (SELECT link_id FROM regions WHERE cluster_id = ?) ORDER BY link_id",
                [cluster_id]).fetchall()
            ids = _next_ids(cur, "verdict_seq", len(links))
            text = f"cluster #{cluster_id}" + (f": {note}" if note else "")
            _insert(cur, "verdicts", {
                "verdict_id": ("BIGINT", ids),
                "target_kind": ("VARCHAR", ["link"] * len(ids)),
                "target_id": ("BIGINT", [r[0] for r in links]),
                "verdict": ("VARCHAR", [verdict] * len(ids)),
                "annotator": ("VARCHAR", [who] * len(ids)),
                "created": ("TIMESTAMP", [now] * len(ids)),
                "note": ("VARCHAR", [text] * len(ids)),
                "geometry_json": ("VARCHAR", [_dumps({"box_a": a, "box_b": b, "affine": _affine(f)})
                                              for _, a, b, f in links]),
                "origin_verdict": ("BIGINT", [head] * len(ids)),
                "role": ("VARCHAR", [REVIEW] * len(ids)),
            })
            return head, ids

        return self._write(work)

    def undo_verdict(self, verdict_id: int, annotator: str, *, note: str | None = None,
                     created: datetime | None = None) -> int:
        """Append a revocation of verdict ``verdict_id``; returns the revocation's id.

        Undoing a cluster verdict also revokes, in the same transaction, the link verdicts
        still live that it gave (``origin_verdict``): the links return to the queue.

        Raises:
            ValueError: no such verdict, it is itself a revocation, or already revoked.
        """
        if not annotator or not annotator.strip():
            raise ValueError("an undo needs the annotator's name")

        def work(cur: duckdb.DuckDBPyConnection) -> int:
            row = cur.execute("SELECT target_kind, target_id, verdict FROM verdicts "
                              "WHERE verdict_id = ?", [verdict_id]).fetchone()
            if row is None:
                raise ValueError(f"verdict {verdict_id} is not in the log")
            if row[2] == REVOKE:
                raise ValueError(f"verdict {verdict_id} is an undo; give a new verdict instead")
            done = cur.execute("SELECT verdict_id FROM verdicts WHERE verdict = 'revoke' "
                               "AND revokes = ?", [verdict_id]).fetchone()
            if done is not None:
                raise ValueError(f"verdict {verdict_id} was already undone by {done[0]}")
            undo = cur.execute(
                "INSERT INTO verdicts (target_kind, target_id, verdict, revokes, annotator, "
                "created, note) VALUES (?, ?, 'revoke', ?, ?, ?, ?) RETURNING verdict_id",
                [row[0], row[1], verdict_id, annotator.strip(), _db_time(created), note],
            ).fetchone()[0]
            derived = cur.execute(
                "SELECT target_kind, target_id, verdict_id FROM live_verdicts "
                "WHERE origin_verdict = ? ORDER BY verdict_id", [verdict_id]).fetchall()
            ids = _next_ids(cur, "verdict_seq", len(derived))
            _insert(cur, "verdicts", {
                "verdict_id": ("BIGINT", ids),
                "target_kind": ("VARCHAR", [d[0] for d in derived]),
                "target_id": ("BIGINT", [d[1] for d in derived]),
                "verdict": ("VARCHAR", [REVOKE] * len(ids)),
                "revokes": ("BIGINT", [d[2] for d in derived]),
                "annotator": ("VARCHAR", [annotator.strip()] * len(ids)),
                "created": ("TIMESTAMP", [_db_time(created)] * len(ids)),
                "note": ("VARCHAR", [f"undo of cluster verdict {verdict_id}"] * len(ids)),
            })
            return undo

        return self._write(work)

    def plan_reviews(self, reviewers: Mapping[int, int]) -> int:
        """Record ``link_id -> 1 | 2`` reviewers for links not planned yet; returns how many.

        Like the held-out split, a link's plan is drawn once and never moves, so agreement
        is measured on a fixed set even if the double-review share changes later.
        """
        bad = {n for n in reviewers.values() if n not in (1, 2)}
        if bad:
            raise ValueError(f"a link gets 1 or 2 reviewers, got {sorted(bad)}")

        def work(cur: duckdb.DuckDBPyConnection) -> int:
            known = {r[0] for r in cur.execute("SELECT link_id FROM review_plan").fetchall()}
            new = [(int(k), int(n)) for k, n in reviewers.items() if int(k) not in known]
            _insert(cur, "review_plan", {
                "link_id": ("BIGINT", [k for k, _ in new]),
                "reviewers": ("INTEGER", [n for _, n in new]),
                "planned": ("TIMESTAMP", [_now()] * len(new)),
            })
            return len(new)

        return self._write(work)

    def review_plan(self) -> dict[int, int]:
        """Every planned link, ``link_id -> reviewers`` (1 or 2)."""
        return dict(self._read(lambda cur: cur.execute(
            "SELECT link_id, reviewers FROM review_plan").fetchall()))

    def reviewer_verdicts(self, link_ids: Sequence[int] | None = None) -> list[Verdict]:
        """Each reviewer's latest live verdict per link (no adjudications), by link then id."""
        where, args = _where({"v.target_id IN (SELECT unnest(?::BIGINT[]))":
                              list(link_ids) if link_ids is not None else None})
        rows = self._read(lambda cur: cur.execute(
            f"SELECT {_VERDICT_COLS} FROM reviewer_verdicts v LEFT JOIN verdicts r "
            f"ON r.verdict = 'revoke' AND r.revokes = v.verdict_id {where} "
            "ORDER BY v.target_id, v.verdict_id", args).fetchall())
        return [_verdict(r) for r in rows]

    def get_verdict(self, verdict_id: int) -> Verdict | None:
        rows = self._read(lambda cur: cur.execute(
            f"SELECT {_VERDICT_COLS} FROM {_VERDICT_FROM} WHERE v.verdict_id = ?",
            [verdict_id]).fetchall())
        return _verdict(rows[0]) if rows else None

    def link_status(self, link_id: int) -> str:
        """Current status of a link: the verdict in force (``link_status`` view of the schema),
        ``disputed`` or ``unreviewed``."""
        row = self._read(lambda cur: cur.execute(
            "SELECT status FROM link_status WHERE link_id = ?", [link_id]).fetchone())
        return row[0] if row else UNREVIEWED

    def cluster_status(self, cluster_id: int) -> str:
        return self._status("cluster", cluster_id)

    def _status(self, kind: str, target_id: int) -> str:
        row = self._read(lambda cur: cur.execute(
            "SELECT verdict FROM current_verdicts WHERE target_kind = ? AND target_id = ?",
            [kind, target_id]).fetchone())
        return row[0] if row else UNREVIEWED

    def link_history(self, link_id: int) -> list[Verdict]:
        """Every verdict and revocation on a link, oldest first (who said what when)."""
        return self.history("link", link_id)

    def history(self, target_kind: str, target_id: int) -> list[Verdict]:
        rows = self._read(lambda cur: cur.execute(
            f"SELECT {_VERDICT_COLS} FROM {_VERDICT_FROM} "
            "WHERE v.target_kind = ? AND v.target_id = ? ORDER BY v.verdict_id",
            [target_kind, target_id]).fetchall())
        return [_verdict(r) for r in rows]

    def last_verdict_by(self, annotator: str, target_kind: str | None = None) -> Verdict | None:
        """The annotator's latest verdict still in force: what "undo my last" withdraws.

        Link verdicts given through a cluster verdict are not candidates: they are
        undone with their cluster verdict.
        """
        where, args = _where({"v.annotator = ?": annotator, "v.target_kind = ?": target_kind})
        rows = self._read(lambda cur: cur.execute(
            f"SELECT {_VERDICT_COLS} FROM {_VERDICT_FROM} {where} AND v.verdict <> 'revoke' "
            "AND v.origin_verdict IS NULL AND r.verdict_id IS NULL "
            "ORDER BY v.verdict_id DESC LIMIT 1", args).fetchall())
        return _verdict(rows[0]) if rows else None

    def current_verdicts(self, target_kind: str = "link") -> dict[int, Verdict]:
        """The verdict in force per target (``target_id -> Verdict``); unreviewed absent."""
        rows = self._read(lambda cur: cur.execute(
            f"SELECT {_VERDICT_COLS} FROM current_verdicts v LEFT JOIN verdicts r "
            "ON r.verdict = 'revoke' AND r.revokes = v.verdict_id WHERE v.target_kind = ?",
            [target_kind]).fetchall())
        return {row[2]: _verdict(row) for row in rows}

    def list_verdicts(self, *, since: datetime | None = None, after_id: int | None = None,
                      round_id: int | None = None, target_kind: str | None = None,
                      annotator: str | None = None) -> list[Verdict]:
        """The log (revocations included), oldest first.

        Args:
            since: only verdicts created at or after this time (UTC).
            after_id: only verdicts with a larger id (a watermark).
            round_id: only verdicts given since that training round started.
        """
        if round_id is not None:
            found = self.get_round(round_id)
            if found is None:
                raise ValueError(f"training round {round_id} is not in the project")
            since = max(since, found.started) if since else found.started
        where, args = _where({"v.created >= ?": _db_time(since) if since else None,
                              "v.verdict_id > ?": after_id, "v.target_kind = ?": target_kind,
                              "v.annotator = ?": annotator})
        rows = self._read(lambda cur: cur.execute(
            f"SELECT {_VERDICT_COLS} FROM {_VERDICT_FROM} {where} ORDER BY v.verdict_id",
            args).fetchall())
        return [_verdict(r) for r in rows]

    # ------------------------------------------------------------------ regions, clusters

    def add_regions(self, regions: Sequence[Region], *, source: str,
                    labels: Sequence[str | None] | None = None,
                    attributes: Sequence[Mapping[str, Any]] | None = None,
                    run_id: int | None = None, link_ids: Sequence[int | None] | None = None,
                    ) -> list[int]:
        """Store regions (e.g. ``source='via'`` hand annotations); returns new ids.

        A region identical to a stored one (same image, box, label and source) is not
        stored again, so importing an annotation file twice adds nothing.
        """
        n = len(regions)
        labels = list(labels) if labels is not None else [None] * n
        attributes = list(attributes) if attributes is not None else [{}] * n
        link_ids = list(link_ids) if link_ids is not None else [None] * n
        if not (len(labels) == len(attributes) == len(link_ids) == n):
            raise ValueError("labels, attributes and link_ids must match regions in length")

        def work(cur: duckdb.DuckDBPyConnection) -> list[int]:
            seen = {(im, tuple(box), label) for im, box, label in cur.execute(
                "SELECT image_id, box, label FROM regions WHERE source = ? AND image_id IN "
                "(SELECT unnest(?::VARCHAR[]))", [source, [r.image_id for r in regions]],
            ).fetchall()}
            keep = []
            for i, r in enumerate(regions):
                key = (r.image_id, tuple(r.box.as_list()), labels[i])
                if key not in seen:
                    seen.add(key)
                    keep.append(i)
            ids = _next_ids(cur, "region_seq", len(keep))
            _insert(cur, "regions", {
                "region_id": ("BIGINT", ids),
                "image_id": ("VARCHAR", [regions[i].image_id for i in keep]),
                "box": ("DOUBLE[]", [regions[i].box.as_list() for i in keep]),
                "label": ("VARCHAR", [labels[i] for i in keep]),
                "source": ("VARCHAR", [source] * len(keep)),
                "run_id": ("BIGINT", [run_id] * len(keep)),
                "link_id": ("BIGINT", [link_ids[i] for i in keep]),
                "attributes_json": ("VARCHAR", [_dumps(attributes[i]) for i in keep]),
            })
            return ids

        return self._write(work)

    def list_regions(self, *, image_id: str | None = None, source: str | None = None,
                     run_id: int | None = None, label: str | None = None,
                     cluster_id: int | None = None) -> list[RegionRecord]:
        where, args = _where({"image_id = ?": image_id, "source = ?": source,
                              "run_id = ?": run_id, "label = ?": label,
                              "cluster_id = ?": cluster_id})
        rows = self._read(lambda cur: cur.execute(
            f"SELECT {_REGION_COLS} FROM regions {where} ORDER BY region_id", args).fetchall())
        return [_region(r) for r in rows]

    def add_clusters(self, run_id: int, clusters: Sequence[Cluster],
                     region_links: Mapping[Region, int] | None = None) -> list[int]:
        """Store the clusters of a discovery run; returns their project-wide ids in order.

        Args:
            region_links: optional link id per member region (the match it came from).
        """
        region_links = region_links or {}

        def work(cur: duckdb.DuckDBPyConnection) -> list[int]:
            model_id = _run_model(cur, run_id)
            ids = _next_ids(cur, "cluster_seq", len(clusters))
            _insert(cur, "clusters", {
                "cluster_id": ("BIGINT", ids), "run_id": ("BIGINT", [run_id] * len(ids)),
                "model_id": ("VARCHAR", [model_id] * len(ids)),
                "number": ("INTEGER", [c.cluster_id for c in clusters]),
            })
            members = [(cid, r) for cid, c in zip(ids, clusters) for r in c.regions]
            _insert(cur, "regions", {
                "region_id": ("BIGINT", _next_ids(cur, "region_seq", len(members))),
                "image_id": ("VARCHAR", [r.image_id for _, r in members]),
                "box": ("DOUBLE[]", [r.box.as_list() for _, r in members]),
                "source": ("VARCHAR", ["discovery"] * len(members)),
                "run_id": ("BIGINT", [run_id] * len(members)),
                "cluster_id": ("BIGINT", [cid for cid, _ in members]),
                "link_id": ("BIGINT", [region_links.get(r) for _, r in members]),
            })
            return ids

        return self._write(work)

    def list_clusters(self, *, run_id: int | None = None, model_id: str | None = None,
                      status: str | None = None, cluster_ids: Sequence[int] | None = None,
                      ) -> list[StoredCluster]:
        """Clusters with member regions and current status, largest first."""
        where, args = _where({
            "c.run_id = ?": run_id, "c.model_id = ?": model_id,
            "coalesce(v.verdict, 'unreviewed') = ?": status,
            "c.cluster_id IN (SELECT unnest(?::BIGINT[]))":
                list(cluster_ids) if cluster_ids is not None else None})

        def work(cur: duckdb.DuckDBPyConnection) -> list[StoredCluster]:
            heads = cur.execute(
                "SELECT c.cluster_id, c.run_id, c.model_id, c.number, "
                "coalesce(v.verdict, 'unreviewed') FROM clusters c LEFT JOIN current_verdicts v "
                f"ON v.target_kind = 'cluster' AND v.target_id = c.cluster_id {where} "
                "ORDER BY c.cluster_id", args).fetchall()
            members = cur.execute(
                f"SELECT {_REGION_COLS} FROM regions WHERE cluster_id IN "
                "(SELECT unnest(?::BIGINT[])) ORDER BY region_id", [[h[0] for h in heads]],
            ).fetchall()
            return heads, members

        heads, members = self._read(work)
        by_cluster: dict[int, list[RegionRecord]] = {}
        for row in members:
            rec = _region(row)
            by_cluster.setdefault(rec.cluster_id, []).append(rec)
        found = [StoredCluster(h[0], h[1], h[2], h[3], tuple(by_cluster.get(h[0], ())), h[4])
                 for h in heads]
        return sorted(found, key=lambda c: (-len(c.regions), c.cluster_id))

    def get_cluster(self, cluster_id: int) -> StoredCluster | None:
        found = self.list_clusters(cluster_ids=[cluster_id])
        return found[0] if found else None

    # ------------------------------------------------------------------ 2D map

    def save_map(self, model_id: str, kind: str, item_ids: Sequence[str],
                 xy: Iterable[Sequence[float]], groups: Sequence[int] | None = None) -> int:
        """Replace ``model_id``'s 2D map of ``kind`` (``image`` or ``region``).

        Args:
            item_ids: (N,) image ids, or region ids as text.
            xy: (N, 2) coordinates (a numpy array is fine).
            groups: (N,) group per point, -1 for none.
        """
        if kind not in ("image", "region"):
            raise ValueError(f"map kind must be 'image' or 'region', not {kind!r}")
        points = [(float(p[0]), float(p[1])) for p in xy]
        groups = [int(g) for g in groups] if groups is not None else [-1] * len(points)
        ids = [str(i) for i in item_ids]
        if not (len(ids) == len(points) == len(groups)):
            raise ValueError(f"map of {len(ids)} items got {len(points)} points, "
                             f"{len(groups)} groups")

        def work(cur: duckdb.DuckDBPyConnection) -> int:
            cur.execute("DELETE FROM map_points WHERE model_id = ? AND kind = ?", [model_id, kind])
            _insert(cur, "map_points", {
                "model_id": ("VARCHAR", [model_id] * len(ids)),
                "kind": ("VARCHAR", [kind] * len(ids)), "item_id": ("VARCHAR", ids),
                "x": ("DOUBLE", [p[0] for p in points]), "y": ("DOUBLE", [p[1] for p in points]),
                "grp": ("INTEGER", groups),
            })
            return len(ids)

        return self._write(work)

    def save_style_map(self, model_id: str, image_ids: Sequence[str], xy: Iterable[Sequence[float]],
                       groups: Sequence[int]) -> int:
        """Replace ``model_id``'s style map: (N, 2) points and style group per image."""
        points = [(float(p[0]), float(p[1])) for p in xy]
        ids, groups = [str(i) for i in image_ids], [int(g) for g in groups]
        if not (len(ids) == len(points) == len(groups)):
            raise ValueError(f"style map of {len(ids)} images got {len(points)} points, {len(groups)} groups")

        def work(cur: duckdb.DuckDBPyConnection) -> int:
            cur.execute("DELETE FROM style_points WHERE model_id = ?", [model_id])
            _insert(cur, "style_points", {
                "model_id": ("VARCHAR", [model_id] * len(ids)), "image_id": ("VARCHAR", ids),
                "x": ("DOUBLE", [p[0] for p in points]), "y": ("DOUBLE", [p[1] for p in points]),
                "grp": ("INTEGER", groups),
            })
            return len(ids)

        return self._write(work)

    def load_style_map(self, model_id: str) -> list[MapPoint]:
        """The style map as image points (``kind`` "image"), its groups the style groups."""
        rows = self._read(lambda cur: cur.execute(
            "SELECT 'image', image_id, x, y, grp FROM style_points WHERE model_id = ? ORDER BY image_id",
            [model_id]).fetchall())
        return [MapPoint(*r) for r in rows]

    def load_map(self, model_id: str, kind: str = "image") -> list[MapPoint]:
        rows = self._read(lambda cur: cur.execute(
            "SELECT kind, item_id, x, y, grp FROM map_points WHERE model_id = ? AND kind = ? "
            "ORDER BY item_id", [model_id, kind]).fetchall())
        return [MapPoint(*r) for r in rows]

    # ------------------------------------------------------------------ training rounds

    def add_round(self, parent_model: str, params: Mapping[str, Any]) -> int:
        """Record the start of a training round from ``parent_model``; returns its id."""

        def work(cur: duckdb.DuckDBPyConnection) -> int:
            _require(cur, "models", "model_id", parent_model, "model")
            return cur.execute(
                "INSERT INTO rounds (parent_model, status, params_json, started) "
                "VALUES (?, 'running', ?, ?) RETURNING round_id",
                [parent_model, _dumps(params), _now()]).fetchone()[0]

        return self._write(work)

    def update_round(self, round_id: int, *, status: str | None = None,
                     new_model: str | None = None, metrics: Mapping[str, Any] | None = None,
                     log_path: str | None = None, error: str | None = None) -> None:
        """Fill in a round's outcome; ``done``/``failed`` also stamps ``finished``.

        ``metrics`` keys are merged into those already stored (e.g. ``before`` then
        ``after``).
        """
        if status is not None and status not in _RUN_STATUSES:
            raise ValueError(f"round status must be one of {_RUN_STATUSES}, not {status!r}")

        def work(cur: duckdb.DuckDBPyConnection) -> None:
            row = cur.execute("SELECT metrics_json FROM rounds WHERE round_id = ?",
                              [round_id]).fetchone()
            if row is None:
                raise ValueError(f"training round {round_id} is not in the project")
            if new_model is not None:
                _require(cur, "models", "model_id", new_model, "model")
            merged = {**_loads(row[0]), **(metrics or {})}
            finished = _now() if status in ("done", "failed") else None
            cur.execute(
                "UPDATE rounds SET status = coalesce(?, status), new_model = coalesce(?, new_model), "
                "metrics_json = ?, log_path = coalesce(?, log_path), error = coalesce(?, error), "
                "finished = coalesce(?, finished) WHERE round_id = ?",
                [status, new_model, _dumps(merged), log_path, error, finished, round_id])

        self._write(work)

    def get_round(self, round_id: int) -> TrainingRound | None:
        rows = self._read(lambda cur: cur.execute(
            f"SELECT {_ROUND_COLS} FROM rounds WHERE round_id = ?", [round_id]).fetchall())
        return _round(rows[0]) if rows else None

    def list_rounds(self) -> list[TrainingRound]:
        """Training rounds, oldest first."""
        rows = self._read(lambda cur: cur.execute(
            f"SELECT {_ROUND_COLS} FROM rounds ORDER BY round_id").fetchall())
        return [_round(r) for r in rows]

    # ------------------------------------------------------------------ held-out split

    def record_split(self, assignments: Mapping[int, str]) -> int:
        """Record ``link_id -> 'train' | 'holdout'`` for links not yet assigned.

        A link's side is fixed once recorded: later calls never move it, so metrics
        across rounds are measured on the same held-out links. Returns how many new
        assignments were stored.
        """
        bad = {s for s in assignments.values() if s not in ("train", "holdout")}
        if bad:
            raise ValueError(f"split must be 'train' or 'holdout', got {sorted(bad)}")

        def work(cur: duckdb.DuckDBPyConnection) -> int:
            known = {r[0] for r in cur.execute("SELECT link_id FROM link_split").fetchall()}
            new = [(int(k), v) for k, v in assignments.items() if int(k) not in known]
            _insert(cur, "link_split", {
                "link_id": ("BIGINT", [k for k, _ in new]),
                "split": ("VARCHAR", [v for _, v in new]),
                "recorded": ("TIMESTAMP", [_now()] * len(new)),
            })
            return len(new)

        return self._write(work)

    def link_split(self) -> dict[int, str]:
        """Every recorded assignment, ``link_id -> 'train' | 'holdout'``."""
        rows = self._read(lambda cur: cur.execute(
            "SELECT link_id, split FROM link_split").fetchall())
        return dict(rows)

    def holdout_links(self) -> frozenset[int]:
        return frozenset(k for k, v in self.link_split().items() if v == "holdout")

    # ------------------------------------------------------------------ annotation files

    def attach_annotations(self, path: str | os.PathLike, fmt: str,
                           label: str | None = None) -> None:
        """Attach a ground-truth file (e.g. ``fmt='brueghel'``) for evaluation."""
        stored = self._stored_path(os.path.abspath(os.fspath(path)))
        self._write(lambda cur: cur.execute(
            "INSERT OR REPLACE INTO annotation_files VALUES (?, ?, ?, ?)",
            [stored, fmt, label, _now()]))

    def list_annotations(self) -> list[AnnotationFile]:
        rows = self._read(lambda cur: cur.execute(
            "SELECT path, format, label, added FROM annotation_files ORDER BY added").fetchall())
        return [AnnotationFile(self._full_path(p), f, label, _utc(a)) for p, f, label, a in rows]

    # ------------------------------------------------------------------ overview

    def summary(self) -> dict[str, int]:
        """Row counts of the main tables, for status lines and the CLI."""
        tables = ("images", "models", "runs", "links", "clusters", "regions", "verdicts",
                  "rounds")
        query = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in tables)
        return dict(self._read(lambda cur: cur.execute(query).fetchall()))


# ---------------------------------------------------------------------- gate registry

_GATES: dict[str, ConnectionGate] = {}
_GATES_LOCK = threading.Lock()


def _gate_for(path: str, busy_timeout: float) -> ConnectionGate:
    """One gate per file per process, shared by every Store on that file."""
    with _GATES_LOCK:
        gate = _GATES.get(path)
        if gate is None:
            gate = _GATES[path] = ConnectionGate(path, _prepare(path), busy_timeout)
        return gate


def _after_fork_in_child() -> None:
    global _GATES_LOCK
    _GATES_LOCK = threading.Lock()
    for gate in _GATES.values():
        gate.forget_after_fork()


def _close_all() -> None:
    """At exit: close idle files cleanly (checkpoint) instead of leaving a WAL behind."""
    for gate in list(_GATES.values()):
        gate.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all)


def _prepare(where: str) -> Callable[[duckdb.DuckDBPyConnection], None]:
    return lambda conn: migrations.prepare(conn, where)


# ---------------------------------------------------------------------- SQL helpers


def _in_transaction(cur: duckdb.DuckDBPyConnection,
                    work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
    return migrations.in_transaction(cur, work)


def _insert(cur: duckdb.DuckDBPyConnection, table: str,
            columns: Mapping[str, tuple[str, list]]) -> None:
    """Insert rows given column-wise, as one statement (``unnest`` of list parameters)."""
    values = [vals for _, vals in columns.values()]
    if not values or not values[0]:
        return
    names = ", ".join(columns)
    selects = ", ".join(f"unnest(?::{sql_type}[])" for sql_type, _ in columns.values())
    cur.execute(f"INSERT INTO {table} ({names}) SELECT {selects}", values)


def _next_ids(cur: duckdb.DuckDBPyConnection, sequence: str, n: int) -> list[int]:
    """Reserve ``n`` ids from a sequence, so callers know which row got which id."""
    if sequence not in _SEQUENCES:
        raise ValueError(f"unknown sequence {sequence!r}")
    if n == 0:
        return []
    rows = cur.execute(f"SELECT nextval('{sequence}') FROM range(?)", [n]).fetchall()
    return sorted(r[0] for r in rows)


def _already_verified(cur: duckdb.DuckDBPyConnection, model_id: str,
                      pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of ``pairs`` (as ``(min, max)``) the model has verified in an earlier commit."""
    ordered = sorted({(min(a, b), max(a, b)) for a, b in pairs})
    if not ordered:
        return set()
    rows = cur.execute(
        "SELECT image_a, image_b FROM verified_pairs WHERE model_id = ? AND (image_a, image_b) "
        "IN (SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]))",
        [model_id, [a for a, _ in ordered], [b for _, b in ordered]]).fetchall()
    return {(a, b) for a, b in rows}


def _insert_links(cur: duckdb.DuckDBPyConnection, run_id: int, model_id: str,
                  matches: Sequence[PairMatch], pairs: list[tuple[str, str]],
                  mark_verified: bool) -> list[int]:
    ids = _next_ids(cur, "link_seq", len(matches))
    _insert(cur, "links", {
        "link_id": ("BIGINT", ids),
        "run_id": ("BIGINT", [run_id] * len(matches)),
        "model_id": ("VARCHAR", [model_id] * len(matches)),
        "image_a": ("VARCHAR", [m.image_a for m in matches]),
        "image_b": ("VARCHAR", [m.image_b for m in matches]),
        "box_a": ("DOUBLE[]", [m.box_a.as_list() for m in matches]),
        "box_b": ("DOUBLE[]", [m.box_b.as_list() for m in matches]),
        "affine": ("DOUBLE[]", [_flat_affine(m.affine) for m in matches]),
        "score": ("DOUBLE", [float(m.score) for m in matches]),
        "n_inliers": ("INTEGER", [int(m.n_inliers) for m in matches]),
        "mirrored": ("BOOLEAN", [bool(m.mirrored) for m in matches]),
        "agreement": ("DOUBLE", [None if m.agreement is None else float(m.agreement) for m in matches]),
    })
    with_points = [(i, m) for i, m in zip(ids, matches) if m.inliers]
    _insert(cur, "link_inliers", {
        "link_id": ("BIGINT", [i for i, _ in with_points]),
        "points": ("FLOAT[]", [[float(v) for point in m.inliers for v in point] for _, m in with_points]),
    })
    found = [(m.image_a, m.image_b) for m in matches] if mark_verified else []
    _mark_pairs(cur, run_id, model_id, pairs + found)
    return ids


def _mark_pairs(cur: duckdb.DuckDBPyConnection, run_id: int, model_id: str,
                pairs: Iterable[tuple[str, str]]) -> int:
    ordered = sorted({(min(a, b), max(a, b)) for a, b in pairs})
    if not ordered:
        return 0
    before = cur.execute("SELECT count(*) FROM verified_pairs WHERE model_id = ?",
                         [model_id]).fetchone()[0]
    cur.execute(
        "INSERT OR IGNORE INTO verified_pairs SELECT ?, unnest(?::VARCHAR[]), "
        "unnest(?::VARCHAR[]), ?", [model_id, [a for a, _ in ordered], [b for _, b in ordered],
                                    run_id])
    after = cur.execute("SELECT count(*) FROM verified_pairs WHERE model_id = ?",
                        [model_id]).fetchone()[0]
    return after - before


def _run_model(cur: duckdb.DuckDBPyConnection, run_id: int) -> str:
    row = cur.execute("SELECT model_id FROM runs WHERE run_id = ?", [run_id]).fetchone()
    if row is None:
        raise ValueError(f"run {run_id} is not in the project; start_run first")
    return row[0]


def _require(cur: duckdb.DuckDBPyConnection, table: str, key: str, value: Any,
             what: str) -> None:
    if cur.execute(f"SELECT 1 FROM {table} WHERE {key} = ?", [value]).fetchone() is None:
        raise ValueError(f"{what} {value!r} is not in the project")


def _where(conditions: Mapping[str, Any]) -> tuple[str, list]:
    """``WHERE`` clause of the conditions whose value is not None, and their arguments."""
    used = [(sql, value) for sql, value in conditions.items() if value is not None]
    if not used:
        return "WHERE TRUE", []
    return "WHERE " + " AND ".join(sql for sql, _ in used), [v for _, v in used]


def _link_filter(run_id: int | None, model_id: str | None, status: str | Sequence[str] | None,
                 image_id: str | None, min_score: float | None,
                 link_ids: Sequence[int] | None) -> tuple[str, list]:
    statuses = [status] if isinstance(status, str) else list(status) if status else None
    return _where({
        "run_id = ?": run_id, "model_id = ?": model_id,
        "status IN (SELECT unnest(?::VARCHAR[]))": statuses,
        "? IN (image_a, image_b)": image_id, "score >= ?": min_score,
        "link_id IN (SELECT unnest(?::BIGINT[]))": list(link_ids) if link_ids is not None else None,
    })


# ---------------------------------------------------------------------- row -> record


def _image(r: tuple) -> ImageRecord:
    return ImageRecord(*r[:11], extra=_loads(r[11]), source=r[12], iiif_canvas=r[13],
                       iiif_manifest=r[14], source_url=r[15], canvas_width=r[16],
                       canvas_height=r[17], added=_utc(r[18]))


def _model(r: tuple) -> ModelVersion:
    return ModelVersion(ModelRef(r[0], r[1], r[2], r[3]), r[4], r[5], _loads(r[6]), _utc(r[7]))


def _run(r: tuple) -> Run:
    return Run(r[0], r[1], r[2], _loads(r[3]), r[4], _utc(r[5]), _utc(r[6]), r[7])


def _round(r: tuple) -> TrainingRound:
    return TrainingRound(r[0], r[1], r[2], _loads(r[3]), _utc(r[4]), r[5], _loads(r[6]), r[7],
                         _utc(r[8]), r[9])


def _link(r: tuple) -> Link:
    match = PairMatch(r[3], r[4], Box(*r[5]), Box(*r[6]), _affine(r[7]), r[8], r[9], bool(r[10]),
                      _points(r[13]) if len(r) > 13 else (), r[11])
    return Link(r[0], r[1], r[2], match, r[12])


def _points(flat: Sequence[float] | None) -> tuple[tuple[float, float, float, float], ...]:
    """A flat [x_a, y_a, x_b, y_b, ...] list -> inlier tuples (none when NULL)."""
    if not flat:
        return ()
    return tuple(tuple(flat[i : i + 4]) for i in range(0, len(flat) - 3, 4))


def _verdict(r: tuple) -> Verdict:
    geometry = json.loads(r[8]) if r[8] else None
    return Verdict(r[0], r[1], r[2], r[3], r[4], _utc(r[5]), r[6], r[7], geometry, r[9], r[10],
                   r[11] or REVIEW, r[12])


def _region(r: tuple) -> RegionRecord:
    return RegionRecord(r[0], Region(r[1], Box(*r[2])), r[3], r[4], r[5], r[6], r[7],
                        _loads(r[8]))


def _flat_affine(affine: Sequence[Sequence[float]]) -> list[float]:
    flat = [float(v) for row in affine for v in row]
    if len(flat) != 6:
        raise ValueError(f"an affine is 2x3, got {len(flat)} numbers")
    return flat


def _affine(flat: Sequence[float]) -> tuple[tuple[float, float, float], ...]:
    return (tuple(flat[:3]), tuple(flat[3:6]))


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _loads(text: str | None) -> dict[str, Any]:
    return json.loads(text) if text else {}


def _now() -> datetime:
    """Naive UTC, as stored (DuckDB TIMESTAMP has no zone)."""
    return datetime.now(UTC).replace(tzinfo=None)


def _db_time(when: datetime | None) -> datetime:
    if when is None:
        return _now()
    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo else when


def _utc(when: datetime | None) -> datetime | None:
    return when.replace(tzinfo=UTC) if when is not None else None
