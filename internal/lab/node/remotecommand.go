package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/streaming/pkg/httpstream"
	"k8s.io/streaming/pkg/httpstream/spdy"
	"k8s.io/streaming/pkg/httpstream/wsstream"
)

// The remote command (exec) protocol versions, as the kubelet names them.
const (
	protoV1 = "channel.k8s.io"
	protoV2 = "v2.channel.k8s.io"
	protoV3 = "v3.channel.k8s.io"
	protoV4 = "v4.channel.k8s.io"
	protoV5 = "v5.channel.k8s.io"

	protoV4Base64 = "v4.base64.channel.k8s.io"
	protoBase64   = "base64.channel.k8s.io"

	// streamCreationTimeout bounds the wait for a SPDY client's streams;
	// execIdleTimeout closes a stream connection nothing was sent on.
	streamCreationTimeout = 30 * time.Second
	execIdleTimeout       = 4 * time.Hour
)

// Websocket channel numbers.
const (
	chanStdin = iota
	chanStdout
	chanStderr
	chanError
	chanResize
)

// termSize is a terminal size sent on the resize stream.
type termSize struct {
	Width, Height uint16
}

// execStreams are the client's streams for one exec, whatever the transport.
type execStreams struct {
	stdin          io.ReadCloser
	stdout, stderr io.WriteCloser
	resize         <-chan termSize
	writeStatus    func(*apierrors.StatusError) error
	close          func()
}

func (n *node) handleExec(w http.ResponseWriter, r *http.Request) {
	c := n.lookupContainer(w, r)
	if c == nil {
		return
	}
	p, err := parseExecParams(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var s *execStreams
	if wsstream.IsWebSocketRequest(r) {
		s, err = wsStreams(w, r, p)
	} else {
		s, err = spdyStreams(w, r, p)
	}
	if err != nil {
		c.w.log.Warn("exec: open streams", "container", c.spec.Name, "err", err)
		return
	}
	defer s.close()
	runErr := c.exec(r.Context(), p, s)
	if runErr == nil {
		_ = s.writeStatus(&apierrors.StatusError{ErrStatus: metav1.Status{Status: metav1.StatusSuccess}})
		return
	}
	var exitErr *exec.ExitError
	if errors.As(runErr, &exitErr) {
		code := exitErr.ExitCode()
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		_ = s.writeStatus(&apierrors.StatusError{ErrStatus: metav1.Status{
			Status:  metav1.StatusFailure,
			Reason:  "NonZeroExitCode",
			Message: fmt.Sprintf("command terminated with non-zero exit code: %v", runErr),
			Details: &metav1.StatusDetails{Causes: []metav1.StatusCause{{Type: "ExitCode", Message: strconv.Itoa(code)}}},
		}})
		return
	}
	_ = s.writeStatus(apierrors.NewInternalError(runErr))
}

// exec runs p.command in the container, wired to s, and waits for it.
func (c *container) exec(ctx context.Context, p execParams, s *execStreams) error {
	cmd, err := c.execCommand(ctx, p.command)
	if err != nil {
		return err
	}
	if p.tty {
		return c.execTTY(cmd, p, s)
	}
	var copies sync.WaitGroup
	var closers []io.Closer
	pipe := func(dst io.Writer) (*os.File, error) {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		closers = append(closers, w)
		copies.Add(1)
		go func() { defer copies.Done(); defer r.Close(); _, _ = io.Copy(dst, r) }()
		return w, nil
	}
	if p.stdout {
		if cmd.Stdout, err = pipe(s.stdout); err != nil {
			return err
		}
	}
	if p.stderr {
		if cmd.Stderr, err = pipe(s.stderr); err != nil {
			return err
		}
	}
	if p.stdin {
		r, w, err := os.Pipe()
		if err != nil {
			return err
		}
		cmd.Stdin = r
		closers = append(closers, r)
		go func() { _, _ = io.Copy(w, s.stdin); w.Close() }()
	}
	err = c.w.n.spawn.start(cmd, c.w.sb.ns, c.cgroup)
	for _, cl := range closers { // the child has its own copies
		cl.Close()
	}
	if err != nil {
		copies.Wait()
		return fmt.Errorf("exec %s: %w", p.command[0], err)
	}
	err = cmd.Wait()
	copies.Wait()
	if p.stdout {
		s.stdout.Close()
	}
	if p.stderr {
		s.stderr.Close()
	}
	return err
}

// spdyStreams upgrades r to SPDY and waits for the client's streams.
func spdyStreams(w http.ResponseWriter, r *http.Request, p execParams) (*execStreams, error) {
	proto, err := httpstream.Handshake(r, w, []string{protoV5, protoV4, protoV3, protoV2})
	if err != nil {
		return nil, err
	}
	type newStream struct {
		s     httpstream.Stream
		reply <-chan struct{}
	}
	streamCh := make(chan newStream)
	conn := spdy.NewResponseUpgrader().UpgradeResponse(w, r, func(s httpstream.Stream, reply <-chan struct{}) error {
		select {
		case streamCh <- newStream{s, reply}:
			return nil
		case <-r.Context().Done():
			return r.Context().Err()
		}
	})
	if conn == nil {
		return nil, errors.New("SPDY upgrade failed")
	}
	conn.SetIdleTimeout(execIdleTimeout)

	expected := 1 // error
	if p.stdin {
		expected++
	}
	if p.stdout {
		expected++
	}
	if p.stderr {
		expected++
	}
	if p.tty && proto != protoV2 {
		expected++ // resize
	}
	out := &execStreams{close: func() { conn.Close() }}
	var resize httpstream.Stream
	var errStream httpstream.Stream
	var replies []<-chan struct{}
	timeout := time.NewTimer(streamCreationTimeout)
	defer timeout.Stop()
	for got := 0; got < expected; got++ {
		select {
		case ns := <-streamCh:
			replies = append(replies, ns.reply)
			switch ns.s.Headers().Get("streamType") {
			case "error":
				errStream = ns.s
			case "stdin":
				out.stdin = ns.s
			case "stdout":
				out.stdout = ns.s
			case "stderr":
				out.stderr = ns.s
			case "resize":
				resize = ns.s
			default:
				conn.Close()
				return nil, fmt.Errorf("unexpected stream type %q", ns.s.Headers().Get("streamType"))
			}
		case <-timeout.C:
			conn.Close()
			return nil, errors.New("timed out waiting for client streams")
		case <-r.Context().Done():
			conn.Close()
			return nil, r.Context().Err()
		}
	}
	for _, rp := range replies {
		<-rp
	}
	if errStream == nil {
		conn.Close()
		return nil, errors.New("client opened no error stream")
	}
	switch proto {
	case protoV4, protoV5:
		out.writeStatus = func(st *apierrors.StatusError) error {
			b, err := json.Marshal(st.Status())
			if err != nil {
				return err
			}
			_, err = errStream.Write(b)
			errStream.Close()
			return err
		}
	default:
		out.writeStatus = func(st *apierrors.StatusError) error {
			if st.Status().Status == metav1.StatusSuccess {
				return errStream.Close()
			}
			_, err := errStream.Write([]byte(st.Error()))
			errStream.Close()
			return err
		}
	}
	if resize != nil {
		out.resize = decodeResize(resize)
	}
	return out, nil
}

// wsStreams opens the channel websocket protocol on r.
func wsStreams(w http.ResponseWriter, r *http.Request, p execParams) (*execStreams, error) {
	rw := func(on bool, t wsstream.ChannelType) wsstream.ChannelType {
		if on {
			return t
		}
		return wsstream.IgnoreChannel
	}
	channels := []wsstream.ChannelType{
		chanStdin:  rw(p.stdin, wsstream.ReadChannel),
		chanStdout: rw(p.stdout, wsstream.WriteChannel),
		chanStderr: rw(p.stderr, wsstream.WriteChannel),
		chanError:  wsstream.WriteChannel,
		chanResize: wsstream.ReadChannel,
	}
	conn := wsstream.NewConn(map[string]wsstream.ChannelProtocolConfig{
		"":            {Binary: true, Channels: channels},
		protoV1:       {Binary: true, Channels: channels},
		protoBase64:   {Binary: false, Channels: channels},
		protoV4:       {Binary: true, Channels: channels},
		protoV4Base64: {Binary: false, Channels: channels},
		protoV5:       {Binary: true, Channels: channels},
	})
	conn.SetIdleTimeout(execIdleTimeout)
	proto, streams, err := conn.Open(w, r)
	if err != nil {
		return nil, fmt.Errorf("open websocket: %w", err)
	}
	// An empty message on the first writable channel tells the client the
	// connection is up.
	if p.stdout {
		_, _ = streams[chanStdout].Write(nil)
	} else if p.stderr {
		_, _ = streams[chanStderr].Write(nil)
	} else {
		_, _ = streams[chanError].Write(nil)
	}
	out := &execStreams{close: func() { conn.Close() }}
	if p.stdin {
		out.stdin = streams[chanStdin]
	}
	if p.stdout {
		out.stdout = streams[chanStdout]
	}
	if p.stderr {
		out.stderr = streams[chanStderr]
	}
	if p.tty {
		out.resize = decodeResize(streams[chanResize])
	}
	errCh := streams[chanError]
	switch proto {
	case protoV4, protoV4Base64, protoV5:
		out.writeStatus = func(st *apierrors.StatusError) error {
			b, err := json.Marshal(st.Status())
			if err != nil {
				return err
			}
			_, err = errCh.Write(b)
			return err
		}
	default:
		out.writeStatus = func(st *apierrors.StatusError) error {
			if st.Status().Status == metav1.StatusSuccess {
				return nil
			}
			_, err := errCh.Write([]byte(st.Error()))
			return err
		}
	}
	return out, nil
}

// decodeResize reads JSON terminal sizes from r until it ends.
func decodeResize(r io.Reader) <-chan termSize {
	ch := make(chan termSize, 1)
	go func() {
		defer close(ch)
		dec := json.NewDecoder(r)
		for {
			var s termSize
			if err := dec.Decode(&s); err != nil {
				return
			}
			ch <- s
		}
	}()
	return ch
}
