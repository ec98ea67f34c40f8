#!/usr/bin/env bash
# Builds the Kubernetes and etcd binaries that lab tests run (internal/kubelab):
# kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, kubectl
# and etcd, at the versions
# pinned in this directory's go.mod.
#
# The binaries land in ${BRAID_CACHE:-/var/cache/braid}/kube-<key>/bin, where
# <key> is derived from this directory's go.mod, go.sum, build.sh and *.go files
# (see cache_key; internal/kubelab computes the same key). A directory that
# already exists is reused as is, so a build runs only when these files change.
# The build happens in a temporary directory that is renamed into place, so a
# kube-<key> directory is always complete. Concurrent runs wait on a lock.
#
# Progress goes to stderr; the last line on stdout is the bin directory.
# With --dir, it only prints the bin directory it would use, built or not.
#
# Environment: BRAID_CACHE (cache root), and the usual GOCACHE / GOMODCACHE /
# GOPROXY; a cold build takes 8-12 min and ~2.6 GB of RAM on 2 cores.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${BRAID_CACHE:-/var/cache/braid}

# cache_key prints the first 16 hex digits of the sha256 of a manifest with one
# line per input file, "<sha256 hex>  <path relative to tools/kube>\n", in
# byte order of the paths: the output of sha256sum over the sorted file list.
cache_key() {
	(
		cd "$here"
		{ printf '%s\n' go.mod go.sum build.sh; find . -type f -name '*.go' -printf '%P\n'; } |
			LC_ALL=C sort -u |
			while IFS= read -r f; do sha256sum -- "$f"; done |
			sha256sum | cut -c1-16
	)
}

# main is called on the last line, so bash has read the whole file before it
# runs anything: editing build.sh during a build cannot derail that build.
main() {
	key=$(cache_key)
	final="$cache/kube-$key"

	case "${1:-}" in
	"") ;;
	--dir)
		echo "$final/bin"
		exit 0
		;;
	*)
		echo "usage: build.sh [--dir]" >&2
		exit 2
		;;
	esac

	if [[ -x "$final/bin/kube-apiserver" ]]; then
		echo "kube tools: cached in $final" >&2
		echo "$final/bin"
		exit 0
	fi

	mkdir -p "$cache"
	exec 9>"$cache/.kube-$key.lock"
	flock 9
	if [[ -x "$final/bin/kube-apiserver" ]]; then # another run built it while we waited
		echo "$final/bin"
		exit 0
	fi

	tmp=$(mktemp -d "$cache/.kube-$key.XXXXXX")
	chmod 755 "$tmp" # mktemp makes it private
	trap 'rm -rf "$tmp"' EXIT

	cd "$here"
	export GOWORK=off CGO_ENABLED=0
	export GOFLAGS="${GOFLAGS:-} -mod=readonly"

	version=$(go list -m -f '{{.Version}}' k8s.io/kubernetes) # v1.37.2
	minor=${version#v*.}
	minor=${minor%%.*}
	major=${version#v}
	major=${major%%.*}
	pkg=k8s.io/component-base/version
	ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"

	echo "kube tools: building kubernetes $version and etcd into $final (cold: 8-12 min, warm: 1-2 min)" >&2
	start=$SECONDS
	mkdir -p "$tmp/bin"
	go build -trimpath -ldflags "$ldflags" -o "$tmp/bin/" \
		k8s.io/kubernetes/cmd/kube-apiserver \
		k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler \
		k8s.io/kubernetes/cmd/kube-proxy \
		k8s.io/kubernetes/cmd/kubectl \
		./cmd/etcd
	{
		echo "kubernetes $version"
		go list -m -f '{{.Path}} {{.Version}}' go.etcd.io/etcd/server/v3
		go version
	} >"$tmp/VERSIONS"

	# mv -T renames the directory itself and fails rather than nesting if final exists.
	mv -T "$tmp" "$final"
	trap - EXIT
	echo "kube tools: built in $((SECONDS - start)) s" >&2
	echo "$final/bin"
}

main "$@"
