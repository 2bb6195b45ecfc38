"""Reference models shared by the tests, the benchmarks and the AC report."""
