"""The AC kit: reference models, AC presets by name, the sweep over them, and the AC report.

It uses both `ac` (to apply AC) and `harness` (to measure); neither imports it,
so the plugin never pulls in the code it tests. Tests, benchmarks and
`python -m ackit report` share it.
"""
