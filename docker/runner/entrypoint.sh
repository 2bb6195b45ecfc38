#!/usr/bin/env bash
# Run one job on this runner, then exit (the runner is registered just in time and
# ephemeral: GitHub deletes it after the job, so nothing a job leaves behind is reused).
#
# ACTIONS_RUNNER_INPUT_JITCONFIG  encoded just-in-time config minted by supervise.sh (single
#                    use); the runner reads it from its environment, as ARC passes it, so
#                    it never appears in a command line
# RUNNER_ROOT        host directory bind-mounted at the same path: the runner copies
#                    itself there so the work and externals folders it hands to the host
#                    daemon for job containers exist on the host at that path
# RUNNER_EXPECT_GPUS GPUs this runner's labels promise; fewer visible means no registration
set -euo pipefail

: "${ACTIONS_RUNNER_INPUT_JITCONFIG:?set by supervise.sh}"
: "${RUNNER_ROOT:?set by supervise.sh}"

expected="${RUNNER_EXPECT_GPUS:-0}"
if [ "$expected" -gt 0 ]; then
    found=$(nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU ' || true)
    if [ "$found" -lt "$expected" ]; then
        echo "gpu-runner: labels promise $expected GPU(s) but nvidia-smi lists $found; not registering" >&2
        exit 1
    fi
    echo "gpu-runner: $found GPU(s) visible, $expected promised"
fi

cp -a /home/runner/. "$RUNNER_ROOT/"
cd "$RUNNER_ROOT"
exec ./run.sh
