#!/usr/bin/env bash
# A by-hand trial of the Ansible playbooks against a real, systemd-booted
# Debian host: what test/ansible.test.ts cannot do (it installs into an
# image's root with --skip-tags relink_npm). Too slow for `npm test` (a
# debootstrap, a boot, apt and npm from their registries, on 2 cores: apt
# 5 to 7 minutes, tarball about 5, with the image cached; a first
# debootstrap adds about 3), so it is run by hand:
#
#   sudo ansible/tests/container-trial.sh                 # Debian 13, Node.js from apt
#   sudo NODE_SOURCE=tarball ansible/tests/container-trial.sh
#
# What it does, as an operator would:
#   1. a minimal Debian (SUITE, default trixie) with openssh-server, python3
#      and sudo, debootstrapped once and cached in CACHE; each run boots a
#      fresh copy of it with systemd-nspawn -b (systemd as the container's
#      PID 1), sharing the host's network, its sshd on 127.0.0.1:SSH_PORT,
#      a throwaway key for root;
#   2. `npm pack` of this checkout, then ansible/install.yml over ssh as
#      ansible/README.md says (relink_node_source=NODE_SOURCE, an app "web"
#      run as its own user), checked: the unit enabled and active, relink
#      status answering, the app's user and folders; a second run changed=0;
#   3. ansible/deploy.yml of two releases of a small Python HTTP server
#      (test/apps/plainapp.py, reload.strategy restart), each answering on
#      127.0.0.1:APP_PORT; the same deploy again changed=0; rollback.yml
#      back to 1.0;
#   4. an upgrade: a package with another version, installed by install.yml
#      (npm install, agent restarted), the app left running and adopted (the
#      same PID); then changed=0 again;
#   5. the container stopped and its root removed (KEEP=1 leaves it running
#      and says how to reach it and how to stop it).
#
# Needs root, debootstrap, systemd-nspawn (systemd-container), nsenter,
# ansible-playbook (ansible-core), ssh, curl, npm; Debian's mirror and the
# npm registry reachable from the host (the container uses the host's
# network). NodeSource (relink_node_source=nodesource, the role's default)
# is not tried: it needs deb.nodesource.com.
#
# Settings (environment):
#   SUITE=trixie          Debian suite; with NODE_SOURCE=apt it must have
#                         nodejs >= 20.19 (trixie: 20.19.2; bookworm: 18)
#   NODE_SOURCE=apt       apt | tarball. tarball: NODE_TARBALL, or one made
#                         from this machine's node (>= 20.19, bin/ and
#                         lib/node_modules/npm and include/node beside it,
#                         as a nodejs.org tarball has them)
#   NODE_TARBALL=         a nodejs.org node-v20.x-linux-x64.tar.xz
#   MIRROR=               debootstrap's mirror (default: its own)
#   CACHE=/var/tmp/relink-trial   where the debootstrapped image is kept
#   SSH_PORT=2222 APP_PORT=18080  free ports on 127.0.0.1
#   EXTRA_CA=             PEM files (space-separated) the container should
#                         trust, for a TLS-intercepting proxy on the way to
#                         the npm registry; default: the host's own
#                         /usr/local/share/ca-certificates/*.crt
#   KEEP=1                leave the container running at the end
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD

SUITE=${SUITE:-trixie}
NODE_SOURCE=${NODE_SOURCE:-apt}
CACHE=${CACHE:-/var/tmp/relink-trial}
SSH_PORT=${SSH_PORT:-2222}
APP_PORT=${APP_PORT:-18080}
KEEP=${KEEP:-0}
MACHINE=relink-trial-$$
ROOT=/var/lib/machines/$MACHINE
WORK=$(mktemp -d /tmp/relink-trial.XXXXXX)
NSPAWN_PID=

t0=$(date +%s)
step_start=$t0
say() { printf '[%4ds] %s\n' "$(($(date +%s) - t0))" "$*"; }
step() { local now; now=$(date +%s); say "$* (previous step: $((now - step_start)) s)"; step_start=$now; }
fail() { say "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (debootstrap, nspawn)"
for tool in debootstrap systemd-nspawn nsenter ansible-playbook ssh curl npm; do
  command -v "$tool" >/dev/null || fail "$tool missing (apt-get install debootstrap systemd-container ansible-core openssh-client curl)"
done
for port in "$SSH_PORT" "$APP_PORT"; do
  ! ss -Hltn "sport = :$port" | grep -q . || fail "port $port is in use: set SSH_PORT / APP_PORT"
done

cleanup() {
  local rc=$?
  if [ "$KEEP" = 1 ] && [ -n "$NSPAWN_PID" ]; then
    say "KEEP=1: container $MACHINE left running (nspawn pid $NSPAWN_PID, root $ROOT)"
    say "  ssh: ssh -i $WORK/id_ed25519 -p $SSH_PORT -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1"
    say "  stop: kill $NSPAWN_PID; rm -rf $ROOT $WORK"
    exit "$rc"
  fi
  if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
    # SIGTERM: nspawn asks the container's systemd to power off.
    kill -TERM "$NSPAWN_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$NSPAWN_PID" 2>/dev/null || true
  fi
  mkdir -p "$CACHE/last-run" && rm -f "$CACHE/last-run/"*.log && cp "$WORK"/*.log "$CACHE/last-run/" 2>/dev/null || true
  rm -rf "$ROOT" "$WORK"
  say "cleaned up (rc $rc); the logs of each step are in $CACHE/last-run/"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. the host ---------------------------------------------------------------
step "image: debian $SUITE"
IMAGE=$CACHE/$SUITE-ssh
if [ ! -x "$IMAGE/usr/lib/systemd/systemd" ]; then
  mkdir -p "$CACHE"
  rm -rf "$IMAGE.tmp"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,openssh-server,python3,sudo,ca-certificates,iproute2 \
    "$SUITE" "$IMAGE.tmp" ${MIRROR:+"$MIRROR"} >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; fail debootstrap; }
  mv "$IMAGE.tmp" "$IMAGE"
fi
mkdir -p /var/lib/machines
cp -a "$IMAGE" "$ROOT"

ssh-keygen -q -t ed25519 -N '' -f "$WORK/id_ed25519"
install -d -m 0700 "$ROOT/root/.ssh"
install -m 0600 "$WORK/id_ed25519.pub" "$ROOT/root/.ssh/authorized_keys"
mkdir -p "$ROOT/etc/ssh/sshd_config.d"
printf 'Port %s\nListenAddress 127.0.0.1\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n' "$SSH_PORT" \
  >"$ROOT/etc/ssh/sshd_config.d/trial.conf"
echo "$MACHINE" >"$ROOT/etc/hostname"
# Trusted by the container too (apt and Debian's node read the system store).
# shellcheck disable=SC2206
cas=(${EXTRA_CA-$(ls /usr/local/share/ca-certificates/*.crt 2>/dev/null || true)})
if [ "${#cas[@]}" -gt 0 ]; then
  cp "${cas[@]}" "$ROOT/usr/local/share/ca-certificates/"
  chroot "$ROOT" update-ca-certificates >/dev/null 2>&1 || true
  # Debian's node reads the system store; a nodejs.org node (tarball) has
  # its own and reads this store only when npm is told to.
  printf 'cafile=/etc/ssl/certs/ca-certificates.crt\n' >"$ROOT/root/.npmrc"
fi

step "boot: systemd-nspawn -b"
# The host's network (no --network-veth, often unavailable); --register=no
# and --keep-unit: no machined or systemd needed on this side.
setsid systemd-nspawn --register=no --keep-unit --quiet -M "$MACHINE" -D "$ROOT" -b >"$WORK/nspawn.log" 2>&1 </dev/null &
NSPAWN_PID=$!
SSH=(ssh -i "$WORK/id_ed25519" -p "$SSH_PORT" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=error -o ConnectTimeout=5 root@127.0.0.1)
on() { "${SSH[@]}" "$@"; }
for i in $(seq 1 120); do
  kill -0 "$NSPAWN_PID" 2>/dev/null || { cat "$WORK/nspawn.log"; fail "systemd-nspawn exited"; }
  state=$(on systemctl is-system-running 2>/dev/null || true)
  case $state in running|degraded) break ;; esac
  [ "$i" = 120 ] && fail "the container did not boot within 60 s (state: $state)"
  sleep 0.5
done
say "booted: $(on 'cat /etc/debian_version; uname -r' | tr '\n' ' ')($state)"

cat >"$WORK/hosts.ini" <<EOF
[relink]
$MACHINE ansible_host=127.0.0.1 ansible_port=$SSH_PORT ansible_user=root ansible_ssh_private_key_file=$WORK/id_ed25519 ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'
EOF
cat >"$WORK/relink-config.yml" <<EOF
relink_agent_config:
  apps:
    - name: web
      dir: /srv/web
      user: web
      limits: {nofile: 4096}
      reload: {strategy: restart}
      health: {url: "http://127.0.0.1:$APP_PORT/healthz"}
EOF

# Runs ansible-playbook; the recap must say failed=0, and changed=N when given.
play() {
  local log=$1 want=$2; shift 2
  local start; start=$(date +%s)
  if ! ansible-playbook -i "$WORK/hosts.ini" "$@" >"$WORK/$log.log" 2>&1; then
    tail -40 "$WORK/$log.log"; fail "$log: ansible-playbook failed (log above)"
  fi
  local recap; recap=$(grep -A1 '^PLAY RECAP' "$WORK/$log.log" | tail -1)
  say "$log: $(($(date +%s) - start)) s: $(echo "$recap" | tr -s ' ' | cut -d' ' -f3-6)"
  [ -z "$want" ] || echo "$recap" | grep -q "changed=$want " || { tail -40 "$WORK/$log.log"; fail "$log: want changed=$want"; }
}

# --- 2. install ------------------------------------------------------------------
step "package: npm pack"
# npm pack runs the prepare script (tsc): dist/ is this checkout's source.
pkg=$(cd "$REPO" && npm pack --silent --pack-destination "$WORK" | tail -1)
PACKAGE=$WORK/$pkg
install_args=(ansible/install.yml -e "relink_package=$PACKAGE" -e "relink_node_source=$NODE_SOURCE" -e "@$WORK/relink-config.yml")
if [ "$NODE_SOURCE" = tarball ]; then
  if [ -z "${NODE_TARBALL:-}" ]; then
    # A nodejs.org-shaped tarball of this machine's node: bin/{node,npm,npx},
    # lib/node_modules/npm, include/node (node-gyp's headers).
    nodebin=$(readlink -f "$(command -v node)")
    nodehome=$(dirname "$(dirname "$nodebin")")
    ver=$(node --version)
    name=node-$ver-linux-x64
    mkdir -p "$WORK/$name/bin" "$WORK/$name/lib/node_modules" "$WORK/$name/include"
    cp "$nodebin" "$WORK/$name/bin/node"
    cp -a "$nodehome/lib/node_modules/npm" "$WORK/$name/lib/node_modules/"
    cp -a "$nodehome/include/node" "$WORK/$name/include/"
    ln -s ../lib/node_modules/npm/bin/npm-cli.js "$WORK/$name/bin/npm"
    ln -s ../lib/node_modules/npm/bin/npx-cli.js "$WORK/$name/bin/npx"
    # gzip: xz takes minutes over a 100 MB node
    tar -C "$WORK" -czf "$WORK/$name.tar.gz" "$name"
    rm -rf "${WORK:?}/$name"
    NODE_TARBALL=$WORK/$name.tar.gz
  fi
  install_args+=(-e "relink_node_tarball=$NODE_TARBALL")
fi

step "install.yml (first run: apt, Node.js from $NODE_SOURCE, npm install, units, config, user)"
play install-1 "" "${install_args[@]}"
on 'systemctl is-enabled relink && systemctl is-active relink' >/dev/null || { on 'systemctl status relink --no-pager; journalctl -u relink --no-pager -n 30'; fail "relink.service is not enabled and active"; }
out=$(on relink status 2>&1 || true)
echo "$out" | grep -q '^agent: running' || fail "relink status: $out"
on 'id web && test "$(stat -c %U /srv/web/release)" = web' >/dev/null || fail "the app's user or folders"
say "unit enabled and active; relink status: $(echo "$out" | head -1); node $(on node --version)"

step "install.yml again"
play install-2 0 "${install_args[@]}"

# --- 3. deploy ---------------------------------------------------------------------
for r in 1.0 2.0; do
  mkdir -p "$WORK/build-$r"
  install -m 0755 "$REPO/test/apps/plainapp.py" "$WORK/build-$r/app.$r"
  printf 'port=%s\nmessage=hello from %s\n' "$APP_PORT" "$r" >"$WORK/build-$r/cfg.$r"
done
serving() { curl -fsS --max-time 5 "http://127.0.0.1:$APP_PORT/" | python3 -c 'import json,sys; print(json.load(sys.stdin)["release"])'; }
for r in 1.0 2.0; do
  step "deploy.yml $r"
  play "deploy-$r" "" ansible/deploy.yml -e relink_app=web -e "relink_release=$r" -e "relink_files_dir=$WORK/build-$r"
  grep -q '"verdict": "deployed"' "$WORK/deploy-$r.log" || fail "deploy $r: verdict not deployed"
  [ "$(serving)" = "app.$r" ] || fail "deploy $r: serving $(serving)"
done
step "deploy.yml 2.0 again"
play deploy-again 0 ansible/deploy.yml -e relink_app=web -e relink_release=2.0 -e "relink_files_dir=$WORK/build-2.0"
grep -q '"verdict": "unchanged"' "$WORK/deploy-again.log" || fail "deploy again: verdict not unchanged"
step "rollback.yml"
play rollback "" ansible/rollback.yml -e relink_app=web
[ "$(serving)" = app.1.0 ] || fail "rollback: serving $(serving)"

# --- 4. upgrade --------------------------------------------------------------------
step "install.yml with another package version (upgrade: agent restarted, app adopted)"
pid_before=$(on "relink status --json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["apps"][0]["pid"])')
agent_before=$(on 'systemctl show -p MainPID --value relink')
mkdir "$WORK/repack"
tar -C "$WORK/repack" -xzf "$PACKAGE"
python3 - "$WORK/repack/package/package.json" <<'PY'
import json, sys
p = sys.argv[1]; d = json.load(open(p)); d["version"] += "-trial"; open(p, "w").write(json.dumps(d, indent=2) + "\n")
PY
tar -C "$WORK/repack" -czf "$WORK/relink-upgrade.tgz" package
upgrade_args=("${install_args[@]}")
upgrade_args[2]="relink_package=$WORK/relink-upgrade.tgz"
play upgrade "" "${upgrade_args[@]}"
on 'relink --version' | grep -q -- '-trial' || fail "upgrade: relink --version says $(on 'relink --version')"
agent_after=$(on 'systemctl show -p MainPID --value relink')
[ "$agent_after" != "$agent_before" ] || fail "upgrade: the agent was not restarted"
pid_after=""
for _ in $(seq 1 20); do
  pid_after=$(on "relink status --json" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["apps"][0]["pid"])' || true)
  [ -n "$pid_after" ] && [ "$pid_after" != None ] && break
  sleep 0.5
done
[ "$pid_after" = "$pid_before" ] || fail "upgrade: the app's pid went from $pid_before to $pid_after"
[ "$(serving)" = app.1.0 ] || fail "upgrade: serving $(serving)"
say "upgraded to $(on 'relink --version'): agent pid $agent_before -> $agent_after, app pid $pid_after kept"
step "install.yml with the upgraded package again"
play upgrade-again 0 "${upgrade_args[@]}"

step "all passed"
say "total $(($(date +%s) - t0)) s"
