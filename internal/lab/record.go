package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// recordFile is the name, in a run's directory, of the record of what the
// run creates: written before anything is created, so a killed run can be
// cleaned up from it.
const recordFile = "lab.json"

// record is a run's plan plus the process that owns it.
type record struct {
	*Plan
	Pid       int    `json:"pid"`
	StartTime string `json:"startTime"` // field 22 of /proc/<pid>/stat: tells a reused pid apart
}

func writeRecord(p *Plan) error {
	if err := os.MkdirAll(p.Dir, 0o700); err != nil {
		return fmt.Errorf("write lab record: %w", err)
	}
	pid := os.Getpid()
	r := record{Plan: p, Pid: pid, StartTime: procStartTime(pid)}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("write lab record: %w", err)
	}
	tmp := filepath.Join(p.Dir, recordFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write lab record: %w", err)
	}
	return os.Rename(tmp, filepath.Join(p.Dir, recordFile))
}

// readRecords returns the records of the runs under dir.
func readRecords(dir string) ([]record, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read lab runs: %w", err)
	}
	var out []record
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		path := filepath.Join(dir, e.Name(), recordFile)
		b, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read lab record: %w", err)
		}
		var r record
		if err := json.Unmarshal(b, &r); err != nil || r.Plan == nil || r.Run == "" {
			return nil, fmt.Errorf("read lab record %s: invalid (%v): remove the directory %s by hand", path, err, filepath.Dir(path))
		}
		out = append(out, r)
	}
	return out, nil
}

// alive reports whether the process that wrote r still runs.
func (r record) alive() bool {
	if r.Pid <= 0 || syscall.Kill(r.Pid, 0) != nil {
		return false
	}
	return r.StartTime == "" || procStartTime(r.Pid) == r.StartTime
}

func procStartTime(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	// The command name (field 2) may contain spaces; fields after it don't.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ""
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 20 {
		return ""
	}
	return fields[19] // field 22 overall
}

// Cleanup removes what runs under dir left behind when their process was
// killed: processes, namespaces, interfaces, cgroups, pinned BPF objects,
// WireGuard sockets and the run directories. Runs whose process is alive are
// left alone. It reports what it removed on report (may be nil).
func Cleanup(dir string, report func(format string, args ...any)) error {
	recs, err := readRecords(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range recs {
		if r.alive() {
			continue
		}
		if report != nil {
			report("cleaning up after lab run %s (process %d is gone)", r.Run, r.Pid)
		}
		errs = append(errs, teardown(r.Plan))
	}
	return errors.Join(errs...)
}

// Down stops the labs running under dir (SIGTERM to their process, which
// tears its lab down), waits up to grace for each, and then cleans up what is
// left as Cleanup does.
func Down(dir string, grace time.Duration, report func(format string, args ...any)) error {
	recs, err := readRecords(dir)
	if err != nil {
		return err
	}
	for _, r := range recs {
		if !r.alive() || r.Pid == os.Getpid() {
			continue
		}
		if report != nil {
			report("stopping lab run %s (process %d)", r.Run, r.Pid)
		}
		_ = syscall.Kill(r.Pid, syscall.SIGTERM)
		deadline := time.Now().Add(grace)
		for r.alive() && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if r.alive() {
			if report != nil {
				report("lab run %s did not stop within %v: killing process %d", r.Run, grace, r.Pid)
			}
			_ = syscall.Kill(r.Pid, syscall.SIGKILL)
			for r.alive() {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	return Cleanup(dir, report)
}

// RunInfo describes a run found under a lab directory.
type RunInfo struct {
	*Plan
	// Pid is the process that runs the lab; Alive says whether it still
	// does (if not, the next Up or Down cleans the run up).
	Pid   int
	Alive bool
}

// Runs returns the runs recorded under dir.
func Runs(dir string) ([]RunInfo, error) {
	recs, err := readRecords(dir)
	if err != nil {
		return nil, err
	}
	out := make([]RunInfo, 0, len(recs))
	for _, r := range recs {
		out = append(out, RunInfo{Plan: r.Plan, Pid: r.Pid, Alive: r.alive()})
	}
	return out, nil
}
