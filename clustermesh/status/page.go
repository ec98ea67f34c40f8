package status

import (
	"html/template"
	"time"

	"github.com/braidmesh/braid/clustermesh"
)

type remoteView struct {
	clustermesh.RemoteClusterStatus
	State string
	// StaleFor is how long a stale cluster has not shown progress.
	StaleFor string
	SyncAge  string
}

type pageView struct {
	Snapshot
	Rows []remoteView
	// Kinds orders the entry columns.
	Kinds []clustermesh.Kind
}

func view(s Snapshot) pageView {
	v := pageView{Snapshot: s, Kinds: clustermesh.Kinds}
	for _, r := range s.Remotes {
		rv := remoteView{RemoteClusterStatus: r, SyncAge: "never"}
		switch {
		case r.Gone:
			rv.State = "gone"
		case !r.Connected:
			rv.State = "disconnected"
		case r.Stale:
			rv.State = "stale"
			rv.StaleFor = s.Time.Sub(r.LastHeard()).Round(time.Second).String()
		case r.Synced:
			rv.State = "synced"
		default:
			rv.State = "syncing"
		}
		if !r.LastUpdate.IsZero() {
			rv.SyncAge = s.Time.Sub(r.LastUpdate).Round(time.Millisecond).String()
		}
		v.Rows = append(v.Rows, rv)
	}
	return v
}

var page = template.Must(template.New("status").Funcs(template.FuncMap{"pct": func(f float64) float64 { return 100 * f }}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="2">
<title>Braid · {{.Cluster}}</title>
<style>
body{font:14px system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}
.synced{color:#176f2c}.syncing,.stale{color:#a66a00}.disconnected,.gone{color:#b00020}
</style></head><body>
<h1>Braid mesh — cluster {{.Cluster}} <small>({{.Role}}{{if .Node}} on {{.Node}}{{end}})</small></h1>
<p id="health">{{if .Healthy}}Healthy{{else}}Degraded: {{range .Problems}}{{.}}; {{end}}{{end}}</p>
{{with .Publish}}<p id="publish">Publishing: {{if .Registered}}registered{{else}}not registered{{end}}{{range $k, $v := .Entries}}, {{$k}} {{$v}}{{end}}{{if .LastError}} — last error: {{.LastError}}{{end}}</p>{{end}}
<table id="remotes"><thead><tr><th>Cluster</th><th>ID</th><th>State</th>{{range .Kinds}}<th>{{.}}</th>{{end}}<th>Sync age</th><th>Invalid</th><th>Failures</th><th>Last error</th></tr></thead><tbody>
{{range .Rows}}{{$r := .}}<tr data-cluster="{{.Name}}"><td>{{.Name}}</td><td>{{.ID}}</td><td class="{{.State}}">{{.State}}{{if .StaleFor}} {{.StaleFor}}{{end}}</td>{{range $.Kinds}}<td>{{index $r.Entries .}}</td>{{end}}<td>{{.SyncAge}}</td><td>{{.Invalid}}</td><td>{{.Failures}}</td><td>{{.LastError}}</td></tr>
{{else}}<tr><td colspan="10">No remote clusters.</td></tr>{{end}}
</tbody></table>
{{if .Maps}}<h2>Datapath maps</h2><table id="maps"><thead><tr><th>Map</th><th>Entries</th><th>Capacity</th><th>Fill</th></tr></thead><tbody>
{{range .Maps}}<tr><td>{{.Name}}</td><td>{{.Entries}}</td><td>{{.Capacity}}</td><td>{{printf "%.1f%%" (pct .Pressure)}}</td></tr>
{{end}}</tbody></table>{{end}}
{{if .Loops}}<h2>Reconcile loops</h2><table id="loops"><thead><tr><th>Loop</th><th>Rounds</th><th>Last success</th><th>Failing rounds</th><th>Last error</th></tr></thead><tbody>
{{range .Loops}}<tr data-loop="{{.Name}}"><td>{{.Name}}</td><td>{{.Rounds}}</td><td>{{if .LastSuccess.IsZero}}never{{else}}{{.LastSuccess.Format "15:04:05.000"}}{{end}}</td><td>{{.ConsecutiveFailures}}</td><td>{{.LastError}}</td></tr>
{{end}}</tbody></table>{{end}}
<p><small>As of {{.Time.Format "2006-01-02 15:04:05.000 MST"}} · <a href="/api/status">JSON</a></small></p>
</body></html>
`))
