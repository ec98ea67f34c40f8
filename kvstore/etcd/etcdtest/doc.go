// Package etcdtest runs a real, embedded etcd for tests and benchmarks.
//
// Start brings up a one-member etcd (go.etcd.io/etcd/server/v3/embed) in a
// temporary directory on free loopback ports, tuned for fast elections
// (TickMs 10, ElectionMs 100: ready in well under a second, minimum lease TTL
// 1 s). The server stops when the test ends. Stop and Restart take it down
// and bring it back on the same ports and data, for reconnect tests; Stop is
// idempotent (embed's Close panics if called twice).
//
// Proxy is a TCP proxy in front of a server that can cut and heal the
// connections passing through it, for partition tests: a client behind it
// loses the server while others keep writing.
//
// It is an ordinary package, not a _test file, so any package's tests can
// import it. Methods of Server and Proxy are safe for concurrent use; Start,
// Restart and NewProxy call t.Fatal on failure and so must be called from the
// test's goroutine.
package etcdtest
