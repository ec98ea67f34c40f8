#!/usr/bin/env bash
# Builds CoreDNS (github.com/coredns/coredns, the plugins main.go imports) at
# the version pinned in this directory's go.mod: the DNS server lab clusters
# run for cluster.local and clusterset.local (internal/lab).
#
# The binary lands in ${BRAID_CACHE:-/var/cache/braid}/coredns-<key>/bin, where
# <key> is derived from this directory's go.mod, go.sum, build.sh and *.go files
# (see cache_key; internal/lab computes the same key). A directory that
# already exists is reused as is, so a build runs only when these files change.
# The build happens in a temporary directory that is renamed into place, so a
# coredns-<key> directory is always complete. Concurrent runs wait on a lock.
#
# Progress goes to stderr; the last line on stdout is the bin directory.
# With --dir, it only prints the bin directory it would use, built or not.
#
# Environment: BRAID_CACHE (cache root), and the usual GOCACHE / GOMODCACHE /
# GOPROXY. A cold build (empty cache, GOCACHE and GOMODCACHE) takes 6 min of
# user CPU and 2 of system: about 5 min on 2 idle cores; measured at 33 min
# on 2 cores shared at a load average of 22-34.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${BRAID_CACHE:-/var/cache/braid}

# cache_key prints the first 16 hex digits of the sha256 of a manifest with one
# line per input file, "<sha256 hex>  <path relative to tools/coredns>\n", in
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

# main is called on the last line, followed by exit on the same line: bash
# has read that whole line before it runs it and reads nothing after it, so
# editing build.sh during a build cannot derail that build.
main() {
	key=$(cache_key)
	final="$cache/coredns-$key"

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

	if [[ -x "$final/bin/coredns" ]]; then
		echo "coredns: cached in $final" >&2
		echo "$final/bin"
		exit 0
	fi

	mkdir -p "$cache"
	exec 9>"$cache/.coredns-$key.lock"
	flock 9
	if [[ -x "$final/bin/coredns" ]]; then # another run built it while we waited
		echo "$final/bin"
		exit 0
	fi

	tmp=$(mktemp -d "$cache/.coredns-$key.XXXXXX")
	chmod 755 "$tmp" # mktemp makes it private
	trap 'rm -rf "$tmp"' EXIT

	cd "$here"
	export GOWORK=off CGO_ENABLED=0
	export GOFLAGS="${GOFLAGS:-} -mod=readonly"

	version=$(go list -m -f '{{.Version}}' github.com/coredns/coredns) # v1.15.0
	echo "coredns: building coredns $version into $final (cold: ~5 min on 2 idle cores, 8 min of CPU; progress every 15 s)" >&2
	start=$SECONDS
	mkdir -p "$tmp/bin"
	# Progress: the module downloads go list makes on a cold cache are
	# listed as they happen; then, every 15 s, how many packages the
	# compiler has finished (go build -v lists each as it completes).
	echo "coredns: resolving packages (downloads the modules on a cold cache)" >&2
	total=$(go list -deps . | wc -l)
	echo "coredns: compiling up to $total packages ($((SECONDS - start)) s so far)" >&2
	go build -v -trimpath -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$version" -o "$tmp/bin/coredns" . 2>"$tmp/build.log" &
	build=$!
	trap 'kill "$build" 2>/dev/null; rm -rf "$tmp"' EXIT
	ticks=0
	while kill -0 "$build" 2>/dev/null; do
		sleep 1
		if ((++ticks % 15 == 0)); then
			echo "coredns: $(grep -c . "$tmp/build.log") of up to $total packages compiled ($((SECONDS - start)) s)" >&2
		fi
	done
	if ! wait "$build"; then
		cat "$tmp/build.log" >&2
		echo "coredns: build failed" >&2
		exit 1
	fi
	rm "$tmp/build.log"
	{
		echo "coredns $version"
		go version
	} >"$tmp/VERSIONS"

	# mv -T renames the directory itself and fails rather than nesting if final exists.
	mv -T "$tmp" "$final"
	trap - EXIT
	echo "coredns: built in $((SECONDS - start)) s" >&2
	echo "$final/bin"
}

main "$@"; exit
