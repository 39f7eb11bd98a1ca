"""The human-in-the-loop cycle: ingest, discovery, review, training rounds, CLI."""
