package cluster

import (
	"encoding/json"
	"io"
	"strings"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newHCLogger returns an hclog.Logger for hashicorp/raft whose lines go to log: hclog writes
// JSON lines into hclogWriter, which turns each into one zap entry at the same level. One
// logger, one format, one level setting.
func newHCLogger(log *zap.Logger) hclog.Logger {
	level := hclog.Info
	if log.Core().Enabled(zapcore.DebugLevel) {
		level = hclog.Debug
	} else if !log.Core().Enabled(zapcore.InfoLevel) {
		level = hclog.Warn
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:       "raft",
		Level:      level,
		Output:     hclogWriter{log.WithOptions(zap.WithCaller(false))},
		JSONFormat: true,
	})
}

type hclogWriter struct{ log *zap.Logger }

var _ io.Writer = hclogWriter{}

func (w hclogWriter) Write(p []byte) (int, error) {
	var entry map[string]any
	if err := json.Unmarshal(p, &entry); err != nil {
		w.log.Info(strings.TrimSpace(string(p)))
		return len(p), nil
	}
	msg, _ := entry["@message"].(string)
	lvl, _ := entry["@level"].(string)
	fields := make([]zap.Field, 0, len(entry))
	for k, v := range entry {
		if strings.HasPrefix(k, "@") {
			continue
		}
		fields = append(fields, zap.Any(k, v))
	}
	switch lvl {
	case "trace", "debug":
		w.log.Debug(msg, fields...)
	case "warn":
		w.log.Warn(msg, fields...)
	case "error":
		w.log.Error(msg, fields...)
	default:
		w.log.Info(msg, fields...)
	}
	return len(p), nil
}
