#!/usr/bin/env bash
# Replays the Dockerfile's build stage without a container engine, so that a Dockerfile that
# cannot build fails the test command (no container engine runs on the CI machines).
#
#   scripts/dockerfile-build.sh [Dockerfile]
#
# The build context is this checkout minus the .dockerignore entries, copied into a temporary
# folder. The first stage's WORKDIR, ENV, COPY and RUN instructions run there in order (RUN
# through `sh -c`, as Docker does), with the stage's root mapped to the temporary folder; any
# other instruction in that stage is an error, so that a new one is not skipped silently. Then
# every `COPY --from=<first stage> PATH` of the later stages must find PATH. What this cannot
# see: the base images' contents (the Rust toolchain here stands in for rust:*-slim) and the
# runtime stage's RUN steps, which install packages and are checked by hadolint instead.
set -euo pipefail
cd "$(dirname "$0")/.."
dockerfile=${1:-Dockerfile}

work=$(mktemp -d "${TMPDIR:-/tmp}/dockerfile-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
context="$work/context"
root="$work/root"
mkdir -p "$context" "$root"

# The context: the checkout without what .dockerignore leaves out (top-level names only,
# which is all this project's .dockerignore uses).
excludes=(--exclude=./.git)
if [ -f .dockerignore ]; then
  while IFS= read -r pattern; do
    pattern=${pattern%%#*}
    pattern=$(echo "$pattern" | xargs)
    [ -n "$pattern" ] && excludes+=("--exclude=./${pattern#/}")
  done < .dockerignore
fi
tar -cf - "${excludes[@]}" . | tar -xf - -C "$context"

die() { echo "dockerfile-build: $dockerfile: $*" >&2; exit 1; }

# Instructions with continuation lines joined, comments and blank lines dropped.
instructions=()
line=""
while IFS= read -r raw || [ -n "$raw" ]; do
  if [ -z "$line" ]; then
    case "$raw" in '#'* | '') continue ;; esac
  fi
  if [[ "$raw" == *'\' ]]; then
    line+="${raw%\\} "
    continue
  fi
  line+="$raw"
  instructions+=("$line")
  line=""
done < "$dockerfile"

stage=0
stage_name=""
cwd="$root"
for ins in "${instructions[@]}"; do
  keyword=${ins%% *}
  args=${ins#* }
  keyword=${keyword^^}
  if [ "$keyword" = FROM ]; then
    stage=$((stage + 1))
    if [ $stage = 1 ]; then
      read -r -a from <<<"$args"
      [ "${#from[@]}" -ge 3 ] && [ "${from[1],,}" = as ] && stage_name=${from[2]}
      echo "== stage 1 ($stage_name) from ${from[0]}: replayed here"
    fi
    continue
  fi
  if [ $stage -gt 1 ]; then
    # Later stages: only check that what they take from the build stage exists.
    if [ "$keyword" = COPY ] && [[ "$args" == --from=* ]]; then
      read -r -a parts <<<"$args"
      from=${parts[0]#--from=}
      if [ "$from" = "$stage_name" ] || [ "$from" = 0 ]; then
        for src in "${parts[@]:1:${#parts[@]}-2}"; do
          [ -e "$root$src" ] || die "COPY --from=$from $src: not produced by the build stage"
          echo "== stage $stage takes $src ($(du -h "$root$src" | cut -f1))"
        done
      fi
    fi
    continue
  fi
  case "$keyword" in
    WORKDIR)
      cwd="$root$args"
      mkdir -p "$cwd"
      ;;
    ENV)
      # KEY=VALUE pairs only (the legacy `ENV KEY VALUE` form is not used here).
      for pair in $args; do export "${pair?}"; done
      ;;
    COPY)
      read -r -a parts <<<"$args"
      [[ "${parts[0]}" == --* ]] && die "COPY ${parts[0]}: flags are not replayed in the build stage"
      dest=${parts[-1]}
      [[ "$dest" == /* ]] && dest="$root$dest" || dest="$cwd/$dest"
      sources=("${parts[@]:0:${#parts[@]}-1}")
      if [ "${#sources[@]}" -gt 1 ] || [[ "${parts[-1]}" == */ ]]; then
        mkdir -p "$dest"
        for src in "${sources[@]}"; do
          [ -e "$context/$src" ] || die "COPY $src: not in the build context"
          if [ -d "$context/$src" ]; then cp -a "$context/$src/." "$dest/"; else cp -a "$context/$src" "$dest/"; fi
        done
      else
        src=${sources[0]}
        [ -e "$context/$src" ] || die "COPY $src: not in the build context"
        if [ -d "$context/$src" ]; then
          mkdir -p "$dest"
          cp -a "$context/$src/." "$dest/"
        else
          mkdir -p "$(dirname "$dest")"
          cp -a "$context/$src" "$dest"
        fi
      fi
      echo "== COPY ${sources[*]}"
      ;;
    RUN)
      echo "== RUN $args"
      (cd "$cwd" && sh -c "$args") || die "RUN failed: $args"
      ;;
    ARG | LABEL) ;;
    *) die "$keyword in the build stage: not replayed by this script; teach it" ;;
  esac
done
[ $stage -ge 1 ] || die "no FROM"
echo "== the Dockerfile's build stage replayed"
