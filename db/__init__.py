"""The project file: schema, migrations, and `Store`, the one class that speaks SQL."""

from db.connection import StoreBusyError
from db.migrations import SCHEMA_VERSION, SchemaVersionError
from db.records import (
    REVOKE,
    UNREVIEWED,
    VERDICTS,
    AnnotationFile,
    ImageRecord,
    Link,
    MapPoint,
    ModelVersion,
    RegionRecord,
    Run,
    StoredCluster,
    TrainingRound,
    Verdict,
    parse_year,
)
from db.store import Store

__all__ = [
    "REVOKE",
    "SCHEMA_VERSION",
    "UNREVIEWED",
    "VERDICTS",
    "AnnotationFile",
    "ImageRecord",
    "Link",
    "MapPoint",
    "ModelVersion",
    "RegionRecord",
    "Run",
    "SchemaVersionError",
    "Store",
    "StoreBusyError",
    "StoredCluster",
    "TrainingRound",
    "Verdict",
    "parse_year",
]
