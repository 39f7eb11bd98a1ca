-- ArtMiner HITL project file, schema version 6 (db/migrations.py: SCHEMA_VERSION).
--
-- Run on every first open of a file in a process: every statement is idempotent, so a
-- file upgraded by db/migrations.py gets any table it lacked. Changes to existing tables
-- go into a new migration, never here alone.
--
-- Conventions: timestamps are UTC (TIMESTAMP without zone, written by the store);
-- boxes are DOUBLE[4] lists [x0, y0, x1, y1] in original image pixels after EXIF
-- orientation; affines are DOUBLE[6] [a, b, c, d, e, f] mapping (x, y) of image A to
-- (a x + b y + c, d x + e y + f) of image B; *_json columns hold JSON text.

CREATE TABLE IF NOT EXISTS schema_version (
    version  INTEGER NOT NULL,
    applied  TIMESTAMP NOT NULL
);

CREATE TABLE IF NOT EXISTS settings (
    key    VARCHAR PRIMARY KEY,
    value  VARCHAR
);

-- image_id = first 16 hex digits of sha256(file bytes): same bytes, same image.
CREATE TABLE IF NOT EXISTS images (
    image_id       VARCHAR PRIMARY KEY,
    sha256         VARCHAR NOT NULL,
    path           VARCHAR NOT NULL,     -- absolute path, or cached copy of a IIIF image
    width          INTEGER NOT NULL,
    height         INTEGER NOT NULL,
    title          VARCHAR,
    artist         VARCHAR,
    date           VARCHAR,              -- as written in the source ("c. 1605-1610")
    year           INTEGER,              -- sortable, parsed from date (1605)
    medium         VARCHAR,
    collection     VARCHAR,
    extra_json     VARCHAR,              -- metadata columns with no column of their own
    source         VARCHAR NOT NULL,     -- folder | iiif | import
    iiif_canvas    VARCHAR,
    iiif_manifest  VARCHAR,
    source_url     VARCHAR,              -- where the bytes were fetched from
    canvas_width   INTEGER,              -- IIIF canvas size: export scales boxes to it
    canvas_height  INTEGER,
    added          TIMESTAMP NOT NULL
);

CREATE TABLE IF NOT EXISTS models (
    model_id           VARCHAR PRIMARY KEY,  -- 'effnet-lite0' or 'effnet-lite0@3fa2c1d9'
    backbone           VARCHAR NOT NULL,
    parent             VARCHAR,
    checkpoint         VARCHAR,
    checkpoint_sha256  VARCHAR,
    round              INTEGER,
    config_json        VARCHAR,
    created            TIMESTAMP NOT NULL
);

CREATE SEQUENCE IF NOT EXISTS run_seq START 1;
CREATE TABLE IF NOT EXISTS runs (
    run_id       BIGINT PRIMARY KEY DEFAULT nextval('run_seq'),
    model_id     VARCHAR NOT NULL,
    kind         VARCHAR NOT NULL,       -- discovery | import
    params_json  VARCHAR NOT NULL,
    status       VARCHAR NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    started      TIMESTAMP NOT NULL,
    finished     TIMESTAMP,
    error        VARCHAR
);

-- Pairs already verified by a model (image_a < image_b): a resumed or incremental
-- run skips them. Written in the same transaction as the pair's links.
CREATE TABLE IF NOT EXISTS verified_pairs (
    model_id  VARCHAR NOT NULL,
    image_a   VARCHAR NOT NULL,
    image_b   VARCHAR NOT NULL,
    run_id    BIGINT NOT NULL,
    PRIMARY KEY (model_id, image_a, image_b)
);

CREATE SEQUENCE IF NOT EXISTS link_seq START 1;
CREATE TABLE IF NOT EXISTS links (
    link_id    BIGINT PRIMARY KEY DEFAULT nextval('link_seq'),
    run_id     BIGINT NOT NULL,
    model_id   VARCHAR NOT NULL,
    image_a    VARCHAR NOT NULL,
    image_b    VARCHAR NOT NULL,
    box_a      DOUBLE[] NOT NULL,
    box_b      DOUBLE[] NOT NULL,
    affine     DOUBLE[] NOT NULL,
    score      DOUBLE NOT NULL,
    n_inliers  INTEGER NOT NULL,
    mirrored   BOOLEAN DEFAULT false,    -- B holds A's region mirrored (affine det < 0)
    agreement  DOUBLE                    -- aligned structure correlation (hitl/agreement.py); NULL: not measured
);

-- The shared detail of a link (engine/cosegment.py): polygons [x0, y0, x1, y1, ...] in
-- A's and B's original pixels, empty when nothing was segmented. A new table, so old
-- files get it from this script without a migration.
CREATE TABLE IF NOT EXISTS link_masks (
    link_id    BIGINT PRIMARY KEY,
    polygon_a  DOUBLE[] NOT NULL,
    polygon_b  DOUBLE[] NOT NULL,
    refined    BOOLEAN NOT NULL,
    created    TIMESTAMP NOT NULL
);

-- The inlier correspondences behind a link (PairMatch.inliers, at most
-- VerifyConfig.max_points, heaviest first), flat [x_a, y_a, x_b, y_b, ...] in A's and
-- B's original pixels. Written with the link; links stored before v6 have no row.
CREATE TABLE IF NOT EXISTS link_inliers (
    link_id  BIGINT PRIMARY KEY,
    points   FLOAT[] NOT NULL
);

CREATE SEQUENCE IF NOT EXISTS cluster_seq START 1;
CREATE TABLE IF NOT EXISTS clusters (
    cluster_id  BIGINT PRIMARY KEY DEFAULT nextval('cluster_seq'),
    run_id      BIGINT NOT NULL,
    model_id    VARCHAR NOT NULL,
    number      INTEGER NOT NULL         -- the engine's cluster number within the run
);

CREATE SEQUENCE IF NOT EXISTS region_seq START 1;
CREATE TABLE IF NOT EXISTS regions (
    region_id        BIGINT PRIMARY KEY DEFAULT nextval('region_seq'),
    image_id         VARCHAR NOT NULL,
    box              DOUBLE[] NOT NULL,
    label            VARCHAR,
    source           VARCHAR NOT NULL,   -- discovery | via | import
    run_id           BIGINT,
    cluster_id       BIGINT,
    link_id          BIGINT,
    attributes_json  VARCHAR
);

CREATE TABLE IF NOT EXISTS map_points (
    model_id  VARCHAR NOT NULL,
    kind      VARCHAR NOT NULL CHECK (kind IN ('image', 'region')),
    item_id   VARCHAR NOT NULL,
    x         DOUBLE NOT NULL,
    y         DOUBLE NOT NULL,
    grp       INTEGER NOT NULL,
    PRIMARY KEY (model_id, kind, item_id)
);

-- The style map (engine/style.py): images laid out by early-layer statistics, with
-- their HDBSCAN style group. A new table, so old files get it without a migration.
CREATE TABLE IF NOT EXISTS style_points (
    model_id  VARCHAR NOT NULL,
    image_id  VARCHAR NOT NULL,
    x         DOUBLE NOT NULL,
    y         DOUBLE NOT NULL,
    grp       INTEGER NOT NULL,
    PRIMARY KEY (model_id, image_id)
);

CREATE SEQUENCE IF NOT EXISTS round_seq START 1;
CREATE TABLE IF NOT EXISTS rounds (
    round_id      BIGINT PRIMARY KEY DEFAULT nextval('round_seq'),
    parent_model  VARCHAR NOT NULL,
    new_model     VARCHAR,
    status        VARCHAR NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    params_json   VARCHAR NOT NULL,
    metrics_json  VARCHAR,
    log_path      VARCHAR,
    started       TIMESTAMP NOT NULL,
    finished      TIMESTAMP,
    error         VARCHAR
);

-- Evaluation split of links: once a link is recorded here its side never changes.
CREATE TABLE IF NOT EXISTS link_split (
    link_id   BIGINT PRIMARY KEY,
    split     VARCHAR NOT NULL CHECK (split IN ('train', 'holdout')),
    recorded  TIMESTAMP NOT NULL
);

CREATE TABLE IF NOT EXISTS annotation_files (
    path    VARCHAR PRIMARY KEY,
    format  VARCHAR NOT NULL,
    label   VARCHAR,
    added   TIMESTAMP NOT NULL
);

-- The verdict log. Append-only: the store has no UPDATE or DELETE for it. Undo
-- appends a 'revoke' row naming the verdict it withdraws.
CREATE SEQUENCE IF NOT EXISTS verdict_seq START 1;
CREATE TABLE IF NOT EXISTS verdicts (
    verdict_id     BIGINT PRIMARY KEY DEFAULT nextval('verdict_seq'),
    target_kind    VARCHAR NOT NULL CHECK (target_kind IN ('link', 'cluster')),
    target_id      BIGINT NOT NULL,
    verdict        VARCHAR NOT NULL CHECK (verdict IN ('confirm', 'reject', 'unsure', 'revoke')),
    revokes        BIGINT,
    annotator      VARCHAR NOT NULL,
    created        TIMESTAMP NOT NULL,
    note           VARCHAR,
    geometry_json  VARCHAR,              -- boxes and affine as the expert saw them
    origin_verdict BIGINT,               -- the cluster verdict this link verdict came from
    role           VARCHAR DEFAULT 'review',  -- review | adjudication (settles a disagreement)
    direction      VARCHAR,              -- a_copies_b | b_copies_a | common_model | unknown
    CHECK ((verdict = 'revoke') = (revokes IS NOT NULL))
);

-- Verdicts still in force: not a revocation, not revoked.
CREATE OR REPLACE VIEW live_verdicts AS
SELECT v.*
FROM verdicts v
WHERE v.verdict <> 'revoke'
  AND v.verdict_id NOT IN (SELECT revokes FROM verdicts WHERE verdict = 'revoke');

-- Links chosen for double review (issue 13): ``reviewers`` = 2 means two annotators
-- judge the link blind. Drawn once per link (hitl/team.py), never changed afterwards.
CREATE TABLE IF NOT EXISTS review_plan (
    link_id    BIGINT PRIMARY KEY,
    reviewers  INTEGER NOT NULL CHECK (reviewers IN (1, 2)),
    planned    TIMESTAMP NOT NULL
);

-- The current verdict per target: the latest live adjudication if there is one, else
-- the latest live verdict (ids grow with time).
CREATE OR REPLACE VIEW current_verdicts AS
SELECT *
FROM live_verdicts
QUALIFY row_number() OVER (PARTITION BY target_kind, target_id
                           ORDER BY (coalesce(role, 'review') = 'adjudication') DESC,
                                    verdict_id DESC) = 1;

-- Each reviewer's latest live verdict per link (adjudications apart): what agreement
-- between annotators is measured on.
CREATE OR REPLACE VIEW reviewer_verdicts AS
SELECT *
FROM live_verdicts
WHERE target_kind = 'link' AND coalesce(role, 'review') = 'review'
QUALIFY row_number() OVER (PARTITION BY target_id, annotator ORDER BY verdict_id DESC) = 1;

-- Double-reviewed links whose reviewers disagree.
CREATE OR REPLACE VIEW link_disputes AS
SELECT r.target_id AS link_id
FROM reviewer_verdicts r
JOIN review_plan p ON p.link_id = r.target_id AND p.reviewers = 2
GROUP BY r.target_id
HAVING count(DISTINCT r.verdict) > 1;

-- Every link with its status: the verdict in force, adjudicated > agreed > single;
-- 'disputed' while double reviewers disagree and nobody adjudicated; 'unreviewed'
-- when no live verdict. Outside double review the latest verdict is in force.
CREATE OR REPLACE VIEW link_status AS
SELECT l.*,
       CASE WHEN c.role = 'adjudication' THEN c.verdict
            WHEN d.link_id IS NOT NULL THEN 'disputed'
            ELSE coalesce(c.verdict, 'unreviewed') END AS status,
       c.verdict_id, c.annotator, c.created AS verdict_at, c.note
FROM links l
LEFT JOIN current_verdicts c ON c.target_kind = 'link' AND c.target_id = l.link_id
LEFT JOIN link_disputes d ON d.link_id = l.link_id;
