package clustermesh

import (
	"bytes"
	"compress/flate"
)

// DeflateForTest compresses raw as EncodeChunk does.
func DeflateForTest(raw []byte) []byte {
	var buf bytes.Buffer
	w, _ := flate.NewWriter(&buf, flate.DefaultCompression)
	w.Write(raw)
	w.Close()
	return buf.Bytes()
}
