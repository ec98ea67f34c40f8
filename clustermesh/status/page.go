package status

import (
	"fmt"
	"html/template"
	"maps"
	"slices"
	"strings"
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

var page = template.Must(template.New("status").Funcs(template.FuncMap{
	"pct":       func(f float64) float64 { return 100 * f },
	"join":      func(s []string) string { return strings.Join(s, ", ") },
	"podLabels": PodLabels,
	"peer":      Peer,
}).Parse(`<!doctype html>
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
{{with .Policy}}<h2>Network policy</h2>
<p id="policy">{{if .Synced}}Synced{{else}}Not synced: the maps keep what they enforced{{end}}: {{.Policies}} policies, {{.Rules}} rules{{if .Revision}}, revision {{.Revision}} {{if eq .Revision .Enforced}}enforced{{else}}(datapath enforces {{if .Enforced}}{{.Enforced}}{{else}}none yet{{end}}){{end}}{{end}}.</p>
{{if .Identities}}<table id="policy-identities"><thead><tr><th>Identity</th><th>Namespace</th><th>Labels</th><th>Ingress policies</th><th>Egress policies</th><th>Dropped</th></tr></thead><tbody>
{{range .Identities}}<tr data-identity="{{.Identity}}"><td>{{.Identity}}</td><td>{{.Namespace}}</td><td>{{podLabels .Labels}}</td><td>{{join .Ingress}}</td><td>{{join .Egress}}</td><td>{{.Dropped}}</td></tr>
{{end}}</tbody></table>{{end}}
{{if .Drops}}<table id="policy-drops"><thead><tr><th>Policy</th><th>Direction</th><th>Reason</th><th>Packets</th></tr></thead><tbody>
{{range .Drops}}<tr data-policy="{{.Policy}}"><td>{{if .Policy}}{{.Policy}}{{else}}(default deny){{end}}</td><td>{{.Direction}}</td><td>{{.Reason}}</td><td>{{.Packets}}</td></tr>
{{end}}</tbody></table>{{end}}
{{if .RecentDrops}}<h3>Last drops</h3><table id="policy-recent"><thead><tr><th>Age</th><th>Direction</th><th>Reason</th><th>Source identity</th><th>From</th><th>To</th><th>Protocol</th></tr></thead><tbody>
{{range .RecentDrops}}<tr><td>{{printf "%.1fs" .AgeSeconds}}</td><td>{{.Direction}}</td><td>{{.Reason}}</td><td>{{peer .Source .SourceCluster}}</td><td>{{.From}}</td><td>{{.To}}</td><td>{{.Protocol}}</td></tr>
{{end}}</tbody></table>{{end}}{{end}}
{{if .Loops}}<h2>Reconcile loops</h2><table id="loops"><thead><tr><th>Loop</th><th>Rounds</th><th>Last success</th><th>Failing rounds</th><th>Last error</th></tr></thead><tbody>
{{range .Loops}}<tr data-loop="{{.Name}}"><td>{{.Name}}</td><td>{{.Rounds}}</td><td>{{if .LastSuccess.IsZero}}never{{else}}{{.LastSuccess.Format "15:04:05.000"}}{{end}}</td><td>{{.ConsecutiveFailures}}</td><td>{{.LastError}}</td></tr>
{{end}}</tbody></table>{{end}}
<p><small>As of {{.Time.Format "2006-01-02 15:04:05.000 MST"}} · <a href="/api/status">JSON</a></small></p>
</body></html>
`))

// PodLabels renders an identity's own labels (not those the operator
// derives: namespace, namespace labels, cluster) as k=v, sorted.
func PodLabels(l map[string]string) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(l)) {
		if !clustermesh.ReservedLabel(k) {
			out = append(out, k+"="+l[k])
		}
	}
	return strings.Join(out, ",")
}

// Peer renders a dropped packet's identity with its cluster; an identity
// of no cluster is an address outside the mesh (or an address block).
func Peer(id clustermesh.NumericIdentity, cluster clustermesh.ClusterName) string {
	if cluster == "" {
		return fmt.Sprintf("%d (outside the mesh)", id)
	}
	return fmt.Sprintf("%d (%s)", id, cluster)
}
