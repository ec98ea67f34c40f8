// Package podbench is `braid bench pods`: throughput (iperf3) and
// request/response latency between pods of two clusters over the tunnel,
// measured beside the same nodes' underlay in the same run. It talks to
// both clusters' API servers with client-go (pods, exec) and nothing else.
package podbench
