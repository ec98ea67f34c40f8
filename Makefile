# Braid. `make demo` and `make test` are the two set-up commands (run as root).
GO        ?= go
BIN       ?= bin
TESTFLAGS ?=

.PHONY: all build test test-unit e2e demo conformance generate kube-tools lint bench clean

all: build

build:
	@echo "==> building braid, braid-operator, braid-agent, braid-lab into $(BIN)/"
	$(GO) build -o $(BIN)/ ./cmd/...

# Every test: unit, privileged (bpf, tunnel: skipped with a reason when not
# root) and end-to-end (build tag e2e). Kubernetes tests need `make
# kube-tools` first; .ci/run does that.
test: lint
	$(GO) test -tags e2e -count=1 -timeout 45m $(TESTFLAGS) ./...

# Fast tests only, under the race detector.
test-unit:
	$(GO) test -race -count=1 ./clustermesh/... ./kvstore/... ./cmd/...

# Two Kubernetes clusters × two nodes on this machine (real control planes,
# lab nodes, a braid-operator per cluster, a braid-agent per node), joined
# into an encrypted mesh; deploy/examples applied to both; cross-cluster
# calls shown; runs until Ctrl-C, then removes everything.
demo: build
	@bash tools/lab/prepare.sh
	@echo "==> Kubernetes binaries (cached after the first build, ~10 min cold)"
	@kube=$$(bash tools/kube/build.sh) && BRAID_KUBE_BIN="$$kube" $(BIN)/braid-lab demo

# The upstream MCS API conformance suite against two lab clusters (with
# CoreDNS): `make conformance MCS_API=<kubernetes-sigs/mcs-api checkout>`.
# Output, Ginkgo JSON report and kubeconfig land in $(CONFORMANCE_REPORT);
# results are summarised in docs/mcs.md.
CONFORMANCE_REPORT ?= conformance-report
conformance: build
	@test -n "$(MCS_API)" || { echo "usage: make conformance MCS_API=<kubernetes-sigs/mcs-api checkout>" >&2; exit 2; }
	@bash tools/lab/prepare.sh
	@kube=$$(bash tools/kube/build.sh) && bash tools/coredns/build.sh >/dev/null && \
		BRAID_KUBE_BIN="$$kube" $(BIN)/braid-lab conformance --mcs-api "$(MCS_API)" --report "$(CONFORMANCE_REPORT)"

# The end-to-end tests (also part of `make test`): the lab's clusters,
# braid's processes, real packets.
e2e:
	$(GO) test -tags e2e -count=1 -timeout 40m $(TESTFLAGS) ./e2e/

# Regenerate the committed BPF objects (needs clang and llvm).
generate:
	$(GO) generate ./bpf/

# Build kube-apiserver, kube-controller-manager, etcd and kubectl, and
# CoreDNS, from the module proxy into a cache outside the checkout (reused
# while tools/kube and tools/coredns are unchanged).
kube-tools:
	bash tools/kube/build.sh
	bash tools/coredns/build.sh

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet -tags e2e ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 -tags e2e ./...

# The numbers in docs/benchmarks.md.
bench: build
	$(BIN)/braid bench propagation
	$(BIN)/braid bench cold-sync
	$(BIN)/braid sim --clusters 511 --nodes 20 --endpoints 200 --rate 200 --duration 60s --mix flap=90,scale-up=4.9,scale-down=4.9,join=0.1,leave=0.1 --lease-ttl 60s
	$(GO) test -tags e2e -run '^$$' -bench Failover -benchtime 1x -timeout 60m ./e2e/
	$(GO) test -run '^$$' -bench 'Detection|Bandwidth' -benchtime 1x -timeout 30m ./clustermesh/gossip/
	$(GO) test -run '^$$' -bench RotationStall -benchtime 1x ./tunnel/

clean:
	rm -rf $(BIN)
