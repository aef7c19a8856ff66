"""Development tools shared by the tests, the benchmarks and ``make chaos`` (never imported by DAGs or operators)."""
