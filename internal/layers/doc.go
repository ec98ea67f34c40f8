// Package layers holds the tests that keep Braid's import graph one-way
// (see STYLE.md: leaves ← loops ← composition roots ← cmd), keep each binary
// free of what it does not use (braid links no datapath and no composition
// root, braid-agent no etcd server, braid's user commands import only what
// they talk to) and every package documented. It has no code of its own;
// TestRulesCatchViolations shows each check failing on a made-up graph.
package layers
