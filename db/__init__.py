"""The DuckDB project file."""
