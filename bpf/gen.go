package bpf

// Regenerate with `make generate` or, from this directory:
//
//	go generate ./bpf/
//
// It needs clang, llvm-strip and libbpf headers (Debian: clang llvm libbpf-dev).

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -target bpfel -tags linux -type ipcache_key -type ipcache_value -type svc_key -type svc_value -type slot_key -type backend_value -type sock_revnat_key -type sock_revnat_value -type policy_key -type policy_value -type drop_key -type drop_event -type ct_key -type ct_value -type datapath_config -type braid_tier -type braid_affinity -type braid_backend_flags -type braid_service_flags -type braid_ipcache_flags -type braid_policy_action -type braid_counter -type braid_policy_dir -type braid_drop_reason braid braid.c -- -I/usr/include/x86_64-linux-gnu -O2 -g -Wall
