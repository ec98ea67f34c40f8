package clustermesh

import (
	"bytes"
	"compress/flate"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"google.golang.org/protobuf/encoding/protowire"
)

// The candidate encodings of an endpoint chunk, measured by
// BenchmarkChunkCodecs to choose the one chunk.go uses (docs/benchmarks.md).

// benchChunk is a full chunk as a sim cluster publishes it.
func benchChunk() []Backend {
	out := make([]Backend, MaxChunkBackends)
	for i := range out {
		n := i % 20
		out[i] = Backend{IP: netip.AddrFrom4([4]byte{10, 7, byte(n), byte(i/20 + 1)}),
			Ports: []BackendPort{{Name: "http", Port: 8080}},
			Node:  fmt.Sprintf("cluster-7-node-%d", n), Zone: fmt.Sprintf("zone-%c", 'a'+n%3), Ready: true, Serving: true}
	}
	return out
}

type codec struct {
	name   string
	encode func([]Backend) ([]byte, error)
	decode func([]byte) ([]Backend, error)
}

func deflated(c codec) codec {
	return codec{
		name: c.name + "+deflate",
		encode: func(bs []Backend) ([]byte, error) {
			raw, err := c.encode(bs)
			if err != nil {
				return nil, err
			}
			var buf bytes.Buffer
			w, _ := flate.NewWriter(&buf, flate.DefaultCompression)
			w.Write(raw)
			w.Close()
			return buf.Bytes(), nil
		},
		decode: func(b []byte) ([]Backend, error) {
			raw, err := io.ReadAll(io.LimitReader(flate.NewReader(bytes.NewReader(b)), 1<<20))
			if err != nil {
				return nil, err
			}
			return c.decode(raw)
		},
	}
}

var jsonCodec = codec{name: "json",
	encode: func(bs []Backend) ([]byte, error) { return json.Marshal(bs) },
	decode: func(b []byte) ([]Backend, error) {
		var out []Backend
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		return out, dec.Decode(&out)
	}}

type cborPort struct {
	Name string `cbor:"1,keyasint,omitempty"`
	Port uint16 `cbor:"2,keyasint"`
}

type cborBackend struct {
	IP          []byte     `cbor:"1,keyasint"`
	Ports       []cborPort `cbor:"2,keyasint"`
	Node        string     `cbor:"3,keyasint,omitempty"`
	Zone        string     `cbor:"4,keyasint,omitempty"`
	Ready       bool       `cbor:"5,keyasint,omitempty"`
	Serving     bool       `cbor:"6,keyasint,omitempty"`
	Terminating bool       `cbor:"7,keyasint,omitempty"`
}

var cborDec, _ = cbor.DecOptions{DupMapKey: cbor.DupMapKeyEnforcedAPF, ExtraReturnErrors: cbor.ExtraDecErrorUnknownField}.DecMode()

var cborCodec = codec{name: "cbor",
	encode: func(bs []Backend) ([]byte, error) {
		w := make([]cborBackend, len(bs))
		for i, b := range bs {
			w[i] = cborBackend{IP: b.IP.AsSlice(), Node: b.Node, Zone: b.Zone, Ready: b.Ready, Serving: b.Serving, Terminating: b.Terminating}
			for _, p := range b.Ports {
				w[i].Ports = append(w[i].Ports, cborPort(p))
			}
		}
		return cbor.Marshal(w)
	},
	decode: func(b []byte) ([]Backend, error) {
		var w []cborBackend
		if err := cborDec.Unmarshal(b, &w); err != nil {
			return nil, err
		}
		out := make([]Backend, len(w))
		for i, x := range w {
			ip, ok := netip.AddrFromSlice(x.IP)
			if !ok {
				return nil, fmt.Errorf("bad ip")
			}
			out[i] = Backend{IP: ip, Node: x.Node, Zone: x.Zone, Ready: x.Ready, Serving: x.Serving, Terminating: x.Terminating}
			for _, p := range x.Ports {
				out[i].Ports = append(out[i].Ports, BackendPort(p))
			}
		}
		return out, nil
	}}

// protoCodec is the protobuf wire format of
//
//	message Chunk { repeated Backend backends = 1; }
//	message Backend { bytes ip = 1; repeated Port ports = 2; string node = 3;
//	  string zone = 4; bool ready = 5; bool serving = 6; bool terminating = 7; }
//	message Port { string name = 1; uint32 port = 2; }
var protoCodec = codec{name: "protobuf",
	encode: func(bs []Backend) ([]byte, error) {
		var out []byte
		for _, b := range bs {
			var m []byte
			m = protowire.AppendTag(m, 1, protowire.BytesType)
			m = protowire.AppendBytes(m, b.IP.AsSlice())
			for _, p := range b.Ports {
				var pm []byte
				pm = protowire.AppendTag(pm, 1, protowire.BytesType)
				pm = protowire.AppendString(pm, p.Name)
				pm = protowire.AppendTag(pm, 2, protowire.VarintType)
				pm = protowire.AppendVarint(pm, uint64(p.Port))
				m = protowire.AppendTag(m, 2, protowire.BytesType)
				m = protowire.AppendBytes(m, pm)
			}
			m = protowire.AppendTag(m, 3, protowire.BytesType)
			m = protowire.AppendString(m, b.Node)
			m = protowire.AppendTag(m, 4, protowire.BytesType)
			m = protowire.AppendString(m, b.Zone)
			for f, v := range []bool{b.Ready, b.Serving, b.Terminating} {
				if v {
					m = protowire.AppendTag(m, protowire.Number(5+f), protowire.VarintType)
					m = protowire.AppendVarint(m, 1)
				}
			}
			out = protowire.AppendTag(out, 1, protowire.BytesType)
			out = protowire.AppendBytes(out, m)
		}
		return out, nil
	},
	decode: func(b []byte) ([]Backend, error) {
		var out []Backend
		for len(b) > 0 {
			num, typ, n := protowire.ConsumeTag(b)
			if n < 0 || num != 1 || typ != protowire.BytesType {
				return nil, fmt.Errorf("bad chunk field")
			}
			b = b[n:]
			m, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return nil, fmt.Errorf("bad backend")
			}
			b = b[n:]
			var be Backend
			for len(m) > 0 {
				num, typ, n := protowire.ConsumeTag(m)
				if n < 0 {
					return nil, fmt.Errorf("bad tag")
				}
				m = m[n:]
				switch {
				case typ == protowire.BytesType:
					v, n := protowire.ConsumeBytes(m)
					if n < 0 {
						return nil, fmt.Errorf("bad bytes")
					}
					m = m[n:]
					switch num {
					case 1:
						ip, ok := netip.AddrFromSlice(v)
						if !ok {
							return nil, fmt.Errorf("bad ip")
						}
						be.IP = ip
					case 2:
						var p BackendPort
						for len(v) > 0 {
							pn, pt, n := protowire.ConsumeTag(v)
							if n < 0 {
								return nil, fmt.Errorf("bad port tag")
							}
							v = v[n:]
							if pn == 1 && pt == protowire.BytesType {
								s, n := protowire.ConsumeString(v)
								if n < 0 {
									return nil, fmt.Errorf("bad port name")
								}
								p.Name, v = s, v[n:]
							} else if pn == 2 && pt == protowire.VarintType {
								x, n := protowire.ConsumeVarint(v)
								if n < 0 || x > 65535 {
									return nil, fmt.Errorf("bad port")
								}
								p.Port, v = uint16(x), v[n:]
							} else {
								return nil, fmt.Errorf("unknown port field")
							}
						}
						be.Ports = append(be.Ports, p)
					case 3:
						be.Node = string(v)
					case 4:
						be.Zone = string(v)
					default:
						return nil, fmt.Errorf("unknown field %d", num)
					}
				case typ == protowire.VarintType && num >= 5 && num <= 7:
					x, n := protowire.ConsumeVarint(m)
					if n < 0 || x > 1 {
						return nil, fmt.Errorf("bad bool")
					}
					m = m[n:]
					*[]*bool{&be.Ready, &be.Serving, &be.Terminating}[num-5] = x == 1
				default:
					return nil, fmt.Errorf("unknown field %d", num)
				}
			}
			out = append(out, be)
		}
		return out, nil
	}}

// BenchmarkChunkCodecs measures each candidate encoding of a full chunk:
// its size (bytes/chunk), and encode and decode time.
func BenchmarkChunkCodecs(b *testing.B) {
	chunk := benchChunk()
	for _, c := range []codec{jsonCodec, deflated(jsonCodec), cborCodec, deflated(cborCodec), protoCodec, deflated(protoCodec)} {
		enc, err := c.encode(chunk)
		if err != nil {
			b.Fatal(err)
		}
		got, err := c.decode(enc)
		if err != nil || len(got) != len(chunk) || got[99].IP != chunk[99].IP || got[99].Node != chunk[99].Node {
			b.Fatalf("%s: round trip: %v", c.name, err)
		}
		b.Run(c.name+"/encode", func(b *testing.B) {
			for b.Loop() {
				c.encode(chunk)
			}
			b.ReportMetric(float64(len(enc)), "bytes/chunk")
		})
		b.Run(c.name+"/decode", func(b *testing.B) {
			for b.Loop() {
				c.decode(enc)
			}
			b.ReportMetric(float64(len(enc)), "bytes/chunk")
		})
	}
}
