// Package benchkit holds what `braid bench` and `braid sim` share: a
// broker run as its own process (so that its CPU and memory are its own),
// latency percentiles, a process's CPU time and resident memory read from
// /proc, and a reader of the few Prometheus metrics they report.
//
// BrokerProcess.Close stops the broker and waits for it; it is safe to call
// more than once. Everything else is a plain function or value.
package benchkit
