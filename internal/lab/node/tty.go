package node

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// openPTY opens a pseudo-terminal pair.
func openPTY() (master, slave *os.File, err error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	unlock := 0
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, unlock); err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("unlock pty: %w", err)
	}
	num, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("pty number: %w", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", num), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("open pty slave: %w", err)
	}
	return m, s, nil
}

func setWinsize(f *os.File, width, height uint16) {
	ws := &unix.Winsize{Row: height, Col: width}
	_, _, _ = unix.Syscall(unix.SYS_IOCTL, f.Fd(), uintptr(unix.TIOCSWINSZ), uintptr(unsafe.Pointer(ws)))
}

// execTTY runs cmd on a new pseudo-terminal wired to s.
func (c *container) execTTY(cmd *exec.Cmd, p execParams, s *execStreams) error {
	master, slave, err := openPTY()
	if err != nil {
		return err
	}
	defer master.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if cmd.Env != nil {
		cmd.Env = append(cmd.Env, "TERM=xterm")
	}
	err = c.w.n.spawn.start(cmd, c.w.sb.ns, c.cgroup)
	slave.Close()
	if err != nil {
		return fmt.Errorf("exec %s: %w", p.command[0], err)
	}
	if s.resize != nil {
		go func() {
			for sz := range s.resize {
				setWinsize(master, sz.Width, sz.Height)
			}
		}()
	}
	if p.stdin && s.stdin != nil {
		go func() { _, _ = io.Copy(master, s.stdin) }()
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		if p.stdout && s.stdout != nil {
			_, _ = io.Copy(s.stdout, master) // ends with EIO once the terminal closes
		} else {
			_, _ = io.Copy(io.Discard, master)
		}
	}()
	err = cmd.Wait()
	<-copied
	if p.stdout && s.stdout != nil {
		s.stdout.Close()
	}
	return err
}
