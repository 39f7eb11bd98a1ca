"""Parquet shards of verified pairs: what distributed workers write instead of the store.

DuckDB allows one writing process, so a worker never opens the project file. It writes
the links of its share of pairs to one Parquet file, a *shard*, under the project's data
folder; the driver loads every shard of the run into the store in one transaction.

A shard's name is deterministic: run id, shard index, and a content hash of its pair
list (``r12-00007-3fa9c1d2e4b5.parquet``). A rerun of a run that died midway plans the
same shards (same run, same pairs still to verify), finds the finished ones on disk and
verifies only the rest. A shard is written to a temporary name and renamed, so a worker
killed mid-write never leaves a file that counts as finished. Pairs without links are
recorded too (in the file's metadata), so the store marks them verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from db.store import Store
from engine.types import Box, PairMatch

Pair = tuple[str, str]

# PairMatch fields with columns of their own; any field added later travels as JSON in
# ``extra`` (so a new PairMatch field never breaks the shards, only widens them).
_COLUMNS = ("image_a", "image_b", "box_a", "box_b", "affine", "score", "n_inliers", "mirrored")
_SCHEMA = pa.schema([
    ("image_a", pa.string()), ("image_b", pa.string()),
    ("box_a", pa.list_(pa.float64(), 4)), ("box_b", pa.list_(pa.float64(), 4)),
    ("affine", pa.list_(pa.float64(), 6)),
    ("score", pa.float64()), ("n_inliers", pa.int64()), ("mirrored", pa.bool_()),
    ("extra", pa.string()),
])


@dataclass(frozen=True)
class Shard:
    """One worker's unit of verification: some pairs, and the file their links go to."""

    index: int
    pairs: tuple[Pair, ...]
    name: str

    def path(self, folder: Path) -> Path:
        return folder / f"{self.name}.parquet"


def shard_folder(data_dir: Path, run_id: int) -> Path:
    """Where a run's shards live: ``artminer-data/shards/run-<id>/`` (shared by all workers)."""
    return Path(data_dir) / "shards" / f"run-{run_id}"


def plan_shards(run_id: int, pairs: Sequence[Pair], size: int) -> list[Shard]:
    """Split the pairs (sorted, as the local executor verifies them) into shards of ``size``.

    The same run and pairs always give the same shards, names included.
    """
    if size < 1:
        raise ValueError(f"shard size must be >= 1, got {size}")
    ordered = sorted((str(a), str(b)) for a, b in pairs)
    shards = []
    for index, start in enumerate(range(0, len(ordered), size)):
        chunk = tuple(ordered[start : start + size])
        digest = hashlib.sha256(json.dumps(chunk).encode()).hexdigest()[:12]
        shards.append(Shard(index, chunk, f"r{run_id}-{index:05d}-{digest}"))
    return shards


def _row(match: PairMatch) -> dict:
    extra = {f.name: getattr(match, f.name) for f in fields(match) if f.name not in _COLUMNS}
    return {
        "image_a": match.image_a, "image_b": match.image_b,
        "box_a": match.box_a.as_list(), "box_b": match.box_b.as_list(),
        "affine": [float(v) for row in match.affine for v in row],
        "score": float(match.score), "n_inliers": int(match.n_inliers), "mirrored": bool(match.mirrored),
        "extra": json.dumps(extra) if extra else None,
    }


def _tuples(value):
    """JSON lists back to the tuples the frozen records hold."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _match(row: dict) -> PairMatch:
    extra = {k: _tuples(v) for k, v in json.loads(row["extra"]).items()} if row["extra"] else {}
    a = row["affine"]
    return PairMatch(row["image_a"], row["image_b"], Box(*row["box_a"]), Box(*row["box_b"]),
                     (tuple(a[:3]), tuple(a[3:])), row["score"], row["n_inliers"], row["mirrored"], **extra)


def write_shard(path: Path, pairs: Sequence[Pair], links: Sequence[PairMatch]) -> None:
    """The links of ``pairs`` (all verified, maybe without links) as one Parquet file, atomically."""
    table = pa.Table.from_pylist([_row(m) for m in links], schema=_SCHEMA)
    table = table.replace_schema_metadata({"pairs": json.dumps([list(p) for p in pairs])})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # a retried task may write the same shard at once
    pq.write_table(table, tmp)
    tmp.replace(path)


def read_shard(path: Path) -> tuple[list[Pair], list[PairMatch]]:
    """(verified pairs, their links) of one shard file."""
    table = pq.read_table(path)
    pairs = [tuple(p) for p in json.loads(table.schema.metadata[b"pairs"])]
    return pairs, [_match(row) for row in table.to_pylist()]


def load_shards(store: Store, run_id: int, shards: Sequence[Shard], folder: Path) -> int:
    """Store the links and verified pairs of every shard in ONE transaction; returns links stored.

    The store drops links of pairs it already holds as verified, so loading twice (a driver
    killed right after the commit, before the shards were removed) never doubles a link.
    The shard folder is removed once loaded.
    """
    pairs: list[Pair] = []
    links: list[PairMatch] = []
    for shard in shards:
        shard_pairs, shard_links = read_shard(shard.path(folder))
        pairs += shard_pairs
        links += shard_links
    stored = store.add_links(run_id, links, verified_pairs=pairs) if pairs else []
    shutil.rmtree(folder, ignore_errors=True)
    return len(stored)
