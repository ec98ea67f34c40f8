#!/usr/bin/env bash
# Prepares this machine (Debian, as root) for the lab (internal/lab): the
# programs it runs and the file systems it uses. Idempotent; prints what it
# does.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
	echo "the lab needs root (network namespaces, cgroups, BPF): run as root" >&2
	exit 1
fi

# iproute2: ip; util-linux: nsenter; curl and busybox: what lab pods run;
# wireguard-tools: wg, to look at the tunnels; socat and netcat-openbsd:
# what the MCS conformance suite's pods run (images alpine/socat and
# nicolaka/netshoot, whose `nc -v -4` busybox's nc lacks).
packages=(iproute2 util-linux curl busybox wireguard-tools socat netcat-openbsd)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
	echo "==> installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! mountpoint -q /sys/fs/bpf; then
	echo "==> mounting bpffs at /sys/fs/bpf"
	mount -t bpf bpf /sys/fs/bpf
fi
if ! grep -q ' - cgroup2 ' /proc/self/mountinfo; then
	echo "no cgroup v2 file system is mounted (the agent's socket load balancer needs one)" >&2
	exit 1
fi
