// Package status serves Braid's status page and its JSON API, and holds the
// small client `braid status` uses.
//
// Handler renders a Source's Snapshot; it never waits on the kvstore or the
// kernel, so a stuck store cannot stall the page. The same JSON document is
// served at /api/status for `braid status` and scripts; /healthz answers
// 200 when the snapshot reports healthy and 503 otherwise.
package status
