"""Data formats: one module per format read or written, over one safe fetch/read layer.

Ingest (`hitl.ingest` chains these): `image_files` (folders and image files),
`metadata_csv` (CSV/TSV metadata tables), `iiif_manifest` (IIIF Presentation 2.1/3),
`via` (VGG Image Annotator 2). Export (`hitl.export` chains these): `csv_export`,
`links_json` (our own format, read back by `import_links`), `w3c` (W3C Web Annotation),
`iiif_annotations`, `training_json`. Shared: `fetch` (every byte read from a path or URL),
`report` (what an ingest did), `link_rows` (what every export format needs per link).
"""
