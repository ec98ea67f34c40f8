// Package bench is `braid bench`: the control-plane benchmarks of
// docs/benchmarks.md, each measured beside its raw baseline in the same run.
// It lives apart from the user commands (package cli) so that their imports
// stay small; see docs/benchmarks.md for what each benchmark measures.
package bench
