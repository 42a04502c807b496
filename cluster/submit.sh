#!/usr/bin/env bash
# Submit an `arxivcls tune` study to a running Ray cluster as a Ray job and return at once.
#
#   cluster/submit.sh ADDRESS CONFIG [extra `arxivcls tune` args ...]
#
#   ADDRESS  the cluster's dashboard / job API, e.g. http://127.0.0.1:8265 (through
#            `ray dashboard cluster/config.yaml`) or the local two-node cluster's URL
#   CONFIG   a study config inside this repository, e.g. tune/scibert.yaml
#   extra    passed to `arxivcls tune` as is: --set train.epochs=2 --data /home/ray/data/papers.parquet
#
# Prints the job id on the first line of stdout, then how to follow, query and stop the job.
#
# What runs where:
#   * This repository (".") is uploaded as the job's working_dir, minus .venv, runs, models,
#     results/*/models, caches and .git. Ray puts it first on PYTHONPATH, so the job runs the code
#     you have here, even if the cluster's installed copy is older (its dependencies come from
#     the cluster's `pip install -e`).
#   * The entrypoint runs on the head node in $ARXIVCLS_WORKDIR when the cluster defines it
#     (cluster/config.yaml sets /home/ray/arxivcls), so reports/<study>/, models/ and the caches
#     land in a directory that outlives the job; otherwise in the job's working_dir copy.
#   * If the cluster defines $ARXIVCLS_STORAGE (cluster/config.yaml: the S3 bucket), it becomes
#     `--set train.storage_path=...` (checkpoints). Both are expanded on the head, not here.
#     Your own `--set train.storage_path=...` comes later and wins.
#
# Token auth: clients of a Ray 2.60 cluster started with a token need RAY_AUTH_MODE=token and
# the token (RAY_AUTH_TOKEN, or the file RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token). This script
# defaults RAY_AUTH_MODE to token; set RAY_AUTH_MODE=disabled for a cluster without auth.
#
# Env: ARXIVCLS_SUBMISSION_ID to choose the job id (default arxivcls-<config>-<UTC time>);
#      ARXIVCLS_SUBMIT_DRY_RUN=1 prints the entrypoint the head would run and submits nothing.
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }

[ $# -ge 2 ] || die "usage: cluster/submit.sh ADDRESS CONFIG [extra arxivcls tune args ...]"
ADDRESS=$1
CONFIG=$2
shift 2

command -v ray >/dev/null || die "ray not found on PATH (activate the project's virtualenv)"
case "$ADDRESS" in
    http://* | https://*) ;;
    *://*) die "ADDRESS must be the dashboard's http(s):// URL, got $ADDRESS" ;;
    *) ADDRESS="http://$ADDRESS" ;;
esac

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
[ -f "$CONFIG" ] || die "config not found: $CONFIG"
CONFIG_ABS=$(cd "$(dirname "$CONFIG")" && pwd -P)/$(basename "$CONFIG")
case "$CONFIG_ABS" in
    "$REPO"/*) CONFIG_REL=${CONFIG_ABS#"$REPO"/} ;;
    *) die "config must be inside the repository ($REPO) so it is uploaded with the job: $CONFIG" ;;
esac

export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}

# Single-quote for /bin/sh on the head.
q() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }

stem=$(basename "$CONFIG_REL"); stem=${stem%.*}
stem=$(printf '%s' "$stem" | tr -c 'A-Za-z0-9_-' '-')
SUBMISSION_ID=${ARXIVCLS_SUBMISSION_ID:-arxivcls-$stem-$(date -u +%Y%m%d-%H%M%S)}

# $src, $ARXIVCLS_WORKDIR and $ARXIVCLS_STORAGE are escaped: the head's shell expands them.
# (`ray job submit` shlex-joins its arguments, hence the explicit `sh -c` below.)
ENTRYPOINT="src=\$PWD && mkdir -p \"\${ARXIVCLS_WORKDIR:-.}\" && cd \"\${ARXIVCLS_WORKDIR:-.}\" && echo \"submit.sh: running in \$PWD\" >&2 && exec arxivcls tune \"\$src\"/$(q "$CONFIG_REL") \${ARXIVCLS_STORAGE:+--set train.storage_path=\$ARXIVCLS_STORAGE}"
for arg in "$@"; do ENTRYPOINT+=" $(q "$arg")"; done

if [ -n "${ARXIVCLS_SUBMIT_DRY_RUN:-}" ]; then
    # for tests: the entrypoint the head would run, nothing submitted
    printf '%s\n' "$ENTRYPOINT"
    exit 0
fi

RUNTIME_ENV='{"excludes": [".venv", ".git", "runs", "models", "reports", "results/*/models", ".cache", "**/__pycache__", "*.egg-info", ".pytest_cache"]}'

cd "$REPO"
ray job submit \
    --address "$ADDRESS" \
    --submission-id "$SUBMISSION_ID" \
    --working-dir . \
    --runtime-env-json "$RUNTIME_ENV" \
    --no-wait \
    -- sh -c "$ENTRYPOINT" >&2

auth=""
[ "$RAY_AUTH_MODE" = token ] && auth="RAY_AUTH_MODE=token "
echo "$SUBMISSION_ID"
cat <<EOF
follow logs: ${auth}ray job logs --address $ADDRESS --follow $SUBMISSION_ID
status:      ${auth}ray job status --address $ADDRESS $SUBMISSION_ID
stop:        ${auth}ray job stop --address $ADDRESS $SUBMISSION_ID
EOF
