"""Units shared by the report, the plot, the tests and the benchmarks."""

MIB = 2**20
