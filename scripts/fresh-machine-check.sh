#!/usr/bin/env bash
# The README's two commands on a stock Debian 12, built here from scratch (root, Debian host; heavy:
# not part of CI). Prints a summary with the time of each step; exit 0 only if both commands passed.
#
#   bash scripts/fresh-machine-check.sh                    # no Redis installed; the whole test suite
#   bash scripts/fresh-machine-check.sh --redis            # redis-server installed beforehand
#   bash scripts/fresh-machine-check.sh --tests "tests/deploy -x"   # pytest arguments for test.sh
#   options: --root DIR (default /srv/chat-fresh), --keep (leave the tree for a look), --worktree
#            (copy the working tree with uncommitted changes instead of the committed HEAD)
#
# 1. debootstrap --variant=minbase bookworm from the mirror apt already uses, with python3 and
#    ca-certificates (host network); then, in the namespace, Debian's rabbitmq-server and postgresql
#    (its default pg_hba.conf: peer on the socket, scram-sha-256 over TCP), and redis-server only with
#    --redis. Nothing else: no pip, no venv, no uv, no curl, no git.
# 2. The repository (git archive of HEAD) is copied to /root/chat.
# 3. In a network namespace of its own (only lo: its services cannot meet this machine's), chrooted,
#    with a clean environment (PATH of Debian's binaries only): `bash scripts/run.sh` until it prints
#    its token, one answer through examples/client.py, Ctrl-C; then `bash scripts/test.sh`. Their
#    downloads (uv, the locked wheels, Debian packages that test.sh installs) go through
#    scripts/fresh-machine-proxy.py, an HTTP proxy on the namespace's 127.0.0.1:3128, given to them
#    as http_proxy/https_proxy (NO_PROXY for loopback) as on any machine behind a proxy.
# Where this host trusts extra CAs for its egress (/usr/local/share/ca-certificates), they are copied
# in, as a machine behind such a proxy has them; a stock machine on the open internet needs none.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=/srv/chat-fresh redis=0 keep=0 worktree=0 tests=""
while [ $# -gt 0 ]; do
  case "$1" in
    --redis) redis=1 ;;
    --keep) keep=1 ;;
    --worktree) worktree=1 ;;
    --root) root=$2; shift ;;
    --tests) tests=$2; shift ;;
    *) echo "unknown option $1 (see the head of $0)" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "fresh-machine-check: needs root (debootstrap, chroot, ip netns)" >&2; exit 1; }
command -v apt-get >/dev/null || { echo "fresh-machine-check: needs a Debian host with apt-get" >&2; exit 1; }

netns="chat-fresh-$$" proxy_port=3128 proxy_pid="" started=$(date +%s) summary=()
step_start=0
step() { step_start=$(date +%s); echo "== $*" >&2; }
done_step() { summary+=("$(printf '%-58s %4ss  %s' "$1" $(( $(date +%s) - step_start )) "$2")"); }

in_root() {  # run a command in the fresh root, in the namespace, with a clean environment
  ip netns exec "$netns" chroot "$root" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM=dumb \
    http_proxy="http://127.0.0.1:$proxy_port" https_proxy="http://127.0.0.1:$proxy_port" \
    HTTP_PROXY="http://127.0.0.1:$proxy_port" HTTPS_PROXY="http://127.0.0.1:$proxy_port" \
    no_proxy=localhost,127.0.0.1,::1 NO_PROXY=localhost,127.0.0.1,::1 \
    ${ssl_cert_file:+SSL_CERT_FILE=$ssl_cert_file} "$@"
}

cleanup() {
  set +e
  if [ -d "$root/proc" ] && mountpoint -q "$root/proc"; then
    ip netns exec "$netns" chroot "$root" sh -c '
      redis-cli shutdown nosave >/dev/null 2>&1; rabbitmqctl stop >/dev/null 2>&1
      for v in /etc/postgresql/*; do pg_ctlcluster "$(basename "$v")" main stop >/dev/null 2>&1; done' 2>/dev/null
  fi
  # whatever is still running from the fresh root (epmd stays behind rabbitmq), by process id
  for _ in 1 2 3; do
    pids=()
    for p in /proc/[0-9]*; do
      [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && pids+=("${p#/proc/}")
    done
    [ ${#pids[@]} -eq 0 ] && break
    kill -TERM "${pids[@]}" 2>/dev/null; sleep 2; kill -KILL "${pids[@]}" 2>/dev/null
  done
  [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null
  for m in dev/pts dev/shm dev sys proc; do mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m"; done
  mountpoint -q "$root" 2>/dev/null && umount -l "$root"
  ip netns del "$netns" 2>/dev/null
  if [ "$keep" = 0 ] && [ -d "$root" ] && ! grep -qE " $root(/| )" /proc/mounts; then rm -rf --one-file-system "$root"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ssl_cert_file=""
step "host tools (debootstrap)"
command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
mirror=$(grep -h -m1 '^URIs:' /etc/apt/sources.list.d/debian.sources 2>/dev/null | awk '{print $2}')
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list)
done_step "host tools" "mirror $mirror"

step "debootstrap bookworm into $root"
[ ! -e "$root" ] || { echo "$root exists: remove it or pass --root" >&2; keep=1; exit 1; }
debootstrap --variant=minbase --include=python3,ca-certificates bookworm "$root" "$mirror" >"/tmp/chat-fresh-debootstrap.log" 2>&1 \
  || { tail -20 /tmp/chat-fresh-debootstrap.log >&2; exit 1; }
done_step "debootstrap (minbase + python3, ca-certificates)" "$(chroot "$root" python3 --version)"

step "machine set-up: Debian's rabbitmq-server, postgresql$([ "$redis" = 1 ] && echo ", redis-server")"
# what the Debian installer writes and debootstrap leaves out: RabbitMQ's node name needs the host name
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$(hostname)" >"$root/etc/hosts"
hostname >"$root/etc/hostname"
if [ -f /etc/apt/sources.list.d/debian.sources ]; then  # with -updates and -security, as the host has
  cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/" && rm -f "$root/etc/apt/sources.list"
fi
for f in /etc/apt/apt.conf.d/*; do grep -q '^Acquire::' "$f" 2>/dev/null && cp "$f" "$root/etc/apt/apt.conf.d/"; done
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  chroot "$root" update-ca-certificates >/dev/null 2>&1
  ssl_cert_file=/etc/ssl/certs/ca-certificates.crt
fi
# a machine's / is a mount point (a bare chroot's is not, and `unshare --propagation` needs one)
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"; mount --rbind /dev "$root/dev"; mount --rbind /sys "$root/sys"
# From here on everything runs in the namespace (so that, e.g., postgresql's cluster takes port 5432
# as on a machine of its own, not the next free one beside this host's).
ip netns add "$netns"
ip netns exec "$netns" ip link set lo up
python3 "$here/scripts/fresh-machine-proxy.py" "$netns" "$proxy_port" & proxy_pid=$!
for _ in $(seq 1 50); do ip netns exec "$netns" bash -c "exec 3<>/dev/tcp/127.0.0.1/$proxy_port" 2>/dev/null && break; sleep 0.1; done
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"; chmod +x "$root/usr/sbin/policy-rc.d"
packages=(rabbitmq-server postgresql); [ "$redis" = 1 ] && packages+=(redis-server)
in_root sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${packages[*]}" \
  >/tmp/chat-fresh-apt.log 2>&1 || { tail -20 /tmp/chat-fresh-apt.log >&2; exit 1; }
rm -f "$root/usr/sbin/policy-rc.d"  # a stock machine has none; test.sh's ensure-*.sh bring their own
pg_hba=$(grep -hE '^(local|host)' "$root"/etc/postgresql/*/main/pg_hba.conf | awk '{print $1"/"$NF}' | sort -u | tr '\n' ' ')
versions="rabbitmq-server $(chroot "$root" dpkg-query -W -f '${Version}' rabbitmq-server), postgresql $(ls "$root/etc/postgresql")"
done_step "apt-get install ${packages[*]}" "$versions; pg_hba: $pg_hba"

step "repository into /root/chat"
mkdir -p "$root/root/chat"
if [ "$worktree" = 1 ]; then
  (cd "$here" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -xf - -C "$root/root/chat"
else
  git -C "$here" archive HEAD | tar -xf - -C "$root/root/chat"
fi
done_step "copy of the repository" "$(git -C "$here" rev-parse --short HEAD)$([ "$worktree" = 1 ] && echo ' + working tree')"

step "bash scripts/run.sh (then one answer, then Ctrl-C)"
log="$root/root/run.log"
# run.sh leads a process group of its own (setsid), as in a terminal; Ctrl-C = SIGINT to that group
rm -f "$root/root/run.pid"
in_root setsid bash -c 'echo $$ >/root/run.pid; cd /root/chat && exec bash scripts/run.sh' >"$log" 2>&1 &
job_pid=$!
for _ in $(seq 1 100); do [ -s "$root/root/run.pid" ] && break; sleep 0.1; done
run_pid=$(cat "$root/root/run.pid")
ok=0
for _ in $(seq 1 600); do
  grep -q "a token" "$log" && { ok=1; break; }
  kill -0 "$run_pid" 2>/dev/null || break
  sleep 1
done
answer=""
if [ "$ok" = 1 ]; then
  answer=$(in_root bash -c 'cd /root/chat && timeout 60 .venv/bin/python examples/client.py "What must a valid contract contain?"' 2>&1) || ok=0
  [ -n "$answer" ] || ok=0
fi
redis_line=$(grep -m1 '^  redis' "$log" | sed 's/^ *//' || true)
kill -INT -- "-$run_pid" 2>/dev/null || true
for _ in $(seq 1 60); do kill -0 "$run_pid" 2>/dev/null || break; sleep 1; done
if kill -0 "$run_pid" 2>/dev/null; then ok=0; echo "run.sh did not stop on Ctrl-C" >&2; kill -KILL -- "-$run_pid" 2>/dev/null || true; fi
wait "$job_pid" 2>/dev/null || true
if [ "$ok" = 1 ]; then
  done_step "run.sh: up, answered, stopped" "$redis_line; answer: $(echo "$answer" | tr '\n' ' ' | cut -c1-60)..."
else
  tail -40 "$log" >&2; echo "$answer" >&2
  done_step "run.sh: FAILED (log above)" "$redis_line"
fi
run_ok=$ok

step "bash scripts/test.sh ${tests}"
set +e
# shellcheck disable=SC2086  # --tests is a list of pytest arguments
in_root bash -c "cd /root/chat && bash scripts/test.sh -p no:cacheprovider -q $tests" >"$root/root/test.log" 2>&1
test_rc=$?
set -e
tail -n 5 "$root/root/test.log" >&2
done_step "test.sh ${tests:-(whole suite)}: exit $test_rc" "$(grep -E '(passed|failed|error)' "$root/root/test.log" | tail -n1)"

echo
echo "fresh-machine check: Debian 12 chroot, netns $netns, redis $([ "$redis" = 1 ] && echo installed || echo absent)"
printf '  %s\n' "${summary[@]}"
echo "  total $(( $(date +%s) - started ))s"
cp "$root/root/run.log" /tmp/chat-fresh-run.log; cp "$root/root/test.log" /tmp/chat-fresh-test.log
echo "  logs: /tmp/chat-fresh-run.log /tmp/chat-fresh-test.log"
[ "$run_ok" = 1 ] && [ "$test_rc" = 0 ]
