#!/usr/bin/env bash
# Static validation of docker-compose.yml (no Docker engine needed).
#
#  1. With dummy values for every required variable, `config -q` must succeed.
#  2. With any one required variable unset (or empty), `config -q` must FAIL:
#     there are no default passwords, compose has to refuse to start.
#
# Uses `docker compose` (v2 plugin) when it works, else the legacy
# `docker-compose` (>= 1.29). With neither, prints "SKIP: no compose client"
# and exits 0.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
compose_file="${repo_root}/docker-compose.yml"

if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1 && docker-compose version >/dev/null 2>&1; then
    compose=(docker-compose)
else
    echo "SKIP: no compose client"
    exit 0
fi

required_vars=(REDIS_PASSWORD POSTGRES_PASSWORD SEEKQ_SECRET_KEY SEEKQ_FLOWER_BASIC_AUTH
               GRAFANA_ADMIN_PASSWORD)
dummy_secret="$(printf 'k%.0s' {1..40})"   # 40 chars, satisfies the >= 32 rule

# An empty env file: keeps a local .env (with real secrets, or with values
# that would mask a missing one) out of the check. (/dev/null is rejected by
# docker-compose 1.29: "is not a file".)
empty_env_file="$(mktemp)"
trap 'rm -f "${empty_env_file}"' EXIT

# Variables kept from the caller's environment besides the ones under test.
keep_env=(PATH="${PATH}" HOME="${HOME:-/tmp}")
[[ -n "${DOCKER_CONFIG:-}" ]] && keep_env+=(DOCKER_CONFIG="${DOCKER_CONFIG}")

# Run `config -q` in a scrubbed environment: keep_env plus the arguments.
run_config() {
    env -i "${keep_env[@]}" "$@" \
        "${compose[@]}" --env-file "${empty_env_file}" -f "${compose_file}" config -q
}

echo "compose client: ${compose[*]} ($("${compose[@]}" version --short 2>/dev/null || echo '?'))"

failures=0

# 1. Valid with all required variables set.
if out="$(run_config REDIS_PASSWORD=dummy-redis POSTGRES_PASSWORD=dummy-postgres \
                     SEEKQ_SECRET_KEY="${dummy_secret}" \
                     SEEKQ_FLOWER_BASIC_AUTH=ops:dummy-password \
                     GRAFANA_ADMIN_PASSWORD=dummy-grafana 2>&1)"; then
    echo "ok: config is valid with all required variables set"
else
    echo "FAIL: config is invalid with all required variables set:"
    echo "${out}"
    failures=$((failures + 1))
fi

# 2. Must fail when a required variable is unset, and again when it is empty.
for missing in "${required_vars[@]}"; do
    base=()
    for v in "${required_vars[@]}"; do
        [[ "${v}" == "${missing}" ]] && continue
        case "${v}" in
            SEEKQ_SECRET_KEY) base+=("${v}=${dummy_secret}") ;;
            *) base+=("${v}=dummy") ;;
        esac
    done
    for mode in unset empty; do
        args=("${base[@]}")
        [[ "${mode}" == empty ]] && args+=("${missing}=")
        if out="$(run_config "${args[@]}" 2>&1)"; then
            echo "FAIL: config accepted with ${missing} ${mode} (a default must have crept in)"
            failures=$((failures + 1))
        elif grep -q "${missing}" <<<"${out}"; then
            echo "ok: config refused with ${missing} ${mode}"
        else
            echo "FAIL: config refused with ${missing} ${mode}, but the error does not name it:"
            echo "${out}"
            failures=$((failures + 1))
        fi
    done
done

if ((failures > 0)); then
    echo "check_compose: ${failures} check(s) failed"
    exit 1
fi
echo "check_compose: all checks passed"
