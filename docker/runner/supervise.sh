#!/usr/bin/env bash
# Keep one ephemeral GPU runner slot busy on this host: mint a just-in-time runner
# config, run one job in a fresh runner container, wipe its directory, repeat.
# Run one copy per slot (a systemd unit each; see docs/ci.md).
#
#   supervise.sh SLOT
#
# GITHUB_REPOSITORY  owner/name the runner serves
# GITHUB_TOKEN_FILE  file holding a token allowed to create runners for that repository
#                    (GitHub App installation token or fine-grained token with
#                    "Administration: write"); it stays on the host, never in a job
# RUNNER_GROUP_ID    runner group limited to this repository (see docs/ci.md)
# RUNNER_GPUS        GPUs this slot promises: labels gpu, gpu-2, gpu-4... up to it
# RUNNER_IMAGE       the image built from docker/runner/Dockerfile
# RUNNER_BASE        host directory for the runners' work folders (default /srv/gha-runners)
set -euo pipefail

slot="${1:?usage: supervise.sh SLOT}"
: "${GITHUB_REPOSITORY:?owner/name}"
: "${GITHUB_TOKEN_FILE:?file with a token that may create runners}"
: "${RUNNER_GROUP_ID:?id of a runner group limited to this repository}"
: "${RUNNER_GPUS:?GPUs this slot promises}"
: "${RUNNER_IMAGE:?image built from docker/runner/Dockerfile}"
base="${RUNNER_BASE:-/srv/gha-runners}"
api="${GITHUB_API_URL:-https://api.github.com}"

labels="self-hosted,linux,x64,gpu"
for n in 2 4 8; do
    if [ "$RUNNER_GPUS" -ge "$n" ]; then labels="$labels,gpu-$n"; fi
done

# One lease directory per host, shared by every job container (see ci.yml); root's
# alone (0700), since the harness refuses a lease folder others can write in.
install -d -m 700 /var/lib/harness-gpu-leases

mint_jitconfig() {
    local name="$1" body
    body=$(jq -n --arg name "$name" --argjson group "$RUNNER_GROUP_ID" --arg labels "$labels" \
        '{name: $name, runner_group_id: $group, labels: ($labels | split(",")), work_folder: "_work"}')
    # The token reaches curl on stdin (--config -), written by bash's builtin printf:
    # never in an argument, which every local user can read in /proc/<pid>/cmdline.
    printf 'header = "Authorization: Bearer %s"\n' "$(<"$GITHUB_TOKEN_FILE")" |
        curl --fail --silent --show-error --config - -X POST \
            -H "Accept: application/vnd.github+json" \
            "$api/repos/$GITHUB_REPOSITORY/actions/runners/generate-jitconfig" \
            -d "$body" | jq -r .encoded_jit_config
}

while true; do
    name="$(hostname -s)-$slot-$(date +%s)"
    root="$base/$slot"
    rm -rf "$root"
    mkdir -p "$root"
    chown 1001:1001 "$root" # the runner image's user
    if ! jit=$(mint_jitconfig "$name") || [ -z "$jit" ] || [ "$jit" = null ]; then
        echo "supervise: could not mint a runner config; retrying in 60 s" >&2
        sleep 60
        continue
    fi
    envfile=$(mktemp) # 0600: the config registers a runner, so it travels in a file,
    # then in the runner's environment (readable by its own user only), never in argv
    printf 'ACTIONS_RUNNER_INPUT_JITCONFIG=%s\n' "$jit" > "$envfile"
    docker run --rm --name "$name" \
        --gpus all \
        --env-file "$envfile" \
        --env RUNNER_ROOT="$root" \
        --env RUNNER_EXPECT_GPUS="$RUNNER_GPUS" \
        --volume /var/run/docker.sock:/var/run/docker.sock \
        --group-add "$(stat -c %g /var/run/docker.sock)" \
        --volume "$root:$root" \
        "$RUNNER_IMAGE" || sleep 30
    rm -f "$envfile"
done
