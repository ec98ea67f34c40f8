package node

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// defaultPath is a container's PATH unless its env sets one; the busybox
// applet directory is appended so host tools win and busybox fills the gaps.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// setupBusybox links every applet of the machine's busybox into dir and
// returns dir, or "" when busybox is not installed.
func setupBusybox(dir string) (string, error) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return "", nil
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return "", fmt.Errorf("list busybox applets: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("busybox applet dir: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if strings.Contains(applet, "/") {
			continue
		}
		link := filepath.Join(dir, applet)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(bb, link); err != nil {
			return "", fmt.Errorf("link busybox applet %s: %w", applet, err)
		}
	}
	return dir, nil
}

// searchPath is the PATH a container's program is looked up in.
func searchPath(envPath, busyboxDir string) string {
	p := envPath
	if p == "" {
		p = defaultPath
	}
	if busyboxDir != "" {
		p += ":" + busyboxDir
	}
	return p
}

// lookProgram finds name the way a shell would in path; names with a slash
// are taken as they are.
func lookProgram(name, path string) (string, bool) {
	isExec := func(p string) bool {
		st, err := os.Stat(p)
		return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
	}
	if strings.Contains(name, "/") {
		return name, isExec(name)
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			continue
		}
		if p := filepath.Join(dir, name); isExec(p) {
			return p, true
		}
	}
	return "", false
}

// containerArgv is the command line a container asks for: Command followed
// by Args, or Args alone (an image's default command is unknown here), with
// $(VAR) references expanded.
func containerArgv(c *corev1.Container, env map[string]string) []string {
	var argv []string
	argv = append(argv, c.Command...)
	argv = append(argv, c.Args...)
	for i := range argv {
		argv[i] = expand(argv[i], env)
	}
	return argv
}

// expand replaces $(NAME) with env[NAME] when NAME is defined and $$ with $,
// as the kubelet does; unknown references are left as they are.
func expand(s string, env map[string]string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := env[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

// envList renders env sorted by name, as NAME=value strings.
func envList(env map[string]string) []string {
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}
