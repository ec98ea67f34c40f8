// Package layers holds the test that keeps Braid's import graph one-way
// (see STYLE.md: leaves ← loops ← composition roots ← cmd) and every
// package documented. It has no code of its own.
package layers
