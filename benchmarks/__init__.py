"""Speed and quality benchmarks that print figures."""
