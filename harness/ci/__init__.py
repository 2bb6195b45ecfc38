"""The harness's CI tools: the job matrix, the test inventory it is sized by, the
durations file shards balance on, and the provisioning check of a runner's Python.

`python -m harness <command>` runs them. The plugin uses `inventory` (to write
`--harness-inventory`) and `durations` (to record `--record-durations`); nothing
here imports the plugin.
"""
