package etcd

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// slogCore is a zapcore.Core that hands etcd's zap records to a slog.Handler.
// etcd logs routine events at info level; they become debug records, so a
// broker at the default level shows only etcd's warnings and errors. While
// *quiet is true (if quiet is not nil), every record is a debug record.
type slogCore struct {
	h     slog.Handler
	quiet *atomic.Bool
}

// NewZapLogger returns a zap logger, as etcd's client and server need,
// that writes to h. etcd's routine info records become debug records; while
// *quiet is true (if quiet is not nil), every record is a debug record, so
// an owner can mute the expected noise of a shutdown.
func NewZapLogger(h slog.Handler, quiet *atomic.Bool) *zap.Logger { return zap.New(slogCore{h, quiet}) }

func (c slogCore) level(l zapcore.Level) slog.Level {
	switch {
	case l <= zapcore.InfoLevel, c.quiet != nil && c.quiet.Load():
		return slog.LevelDebug
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

func (c slogCore) Enabled(l zapcore.Level) bool {
	return c.h.Enabled(context.Background(), c.level(l))
}

func (c slogCore) With(fs []zapcore.Field) zapcore.Core {
	return slogCore{c.h.WithAttrs(attrs(fs)), c.quiet}
}

func (c slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c slogCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	r := slog.NewRecord(e.Time, c.level(e.Level), e.Message, 0)
	if e.LoggerName != "" {
		r.AddAttrs(slog.String("logger", e.LoggerName))
	}
	r.AddAttrs(attrs(fs)...)
	return c.h.Handle(context.Background(), r)
}

func (slogCore) Sync() error { return nil }

// attrs converts zap fields, in a stable order.
func attrs(fs []zapcore.Field) []slog.Attr {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fs {
		f.AddTo(enc)
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]slog.Attr, 0, len(keys))
	for _, k := range keys {
		out = append(out, slog.Any(k, redact(k, enc.Fields[k])))
	}
	return out
}

// Redacted replaces a logged value that may hold a credential.
const Redacted = "[redacted: may hold credentials]"

// secretMarkers are substrings of etcd's logged requests and fields that
// carry credentials: authenticate and user requests (passwords, bcrypt
// hashes), simple and JWT tokens.
var secretMarkers = []string{"password", "token", "authenticate", "$2a$", "$2b$", "eyJ"}

// redact returns v, or Redacted when the field's name or value may hold a
// credential. etcd logs applied requests whole at debug level, including
// authentication requests and their tokens.
func redact(key string, v any) any {
	lk := strings.ToLower(key)
	if lk != "token-fingerprint" && (strings.Contains(lk, "password") || strings.Contains(lk, "token")) {
		return Redacted
	}
	var s string
	switch x := v.(type) {
	case string:
		s = x
	case bool, int, int64, uint64, float64:
		return v
	default:
		s = fmt.Sprint(x)
	}
	ls := strings.ToLower(s)
	for _, m := range secretMarkers {
		if strings.Contains(ls, strings.ToLower(m)) {
			return Redacted
		}
	}
	return v
}
