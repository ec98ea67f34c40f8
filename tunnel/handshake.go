package tunnel

import (
	"crypto/hmac"
	"hash"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/curve25519"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// The first steps of WireGuard's Noise_IKpsk2 handshake, as the responder
// takes them: enough to learn, from a handshake initiation, which static
// key the initiator holds (see initiatorKey).
const (
	noiseConstruction = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
	wgIdentifier      = "WireGuard v1 zx2c4 Jason@zx2c4.com"

	initiationSize = 148
	// Offsets in an initiation: type and sender (4 + 4), ephemeral (32),
	// encrypted static (32 + 16), encrypted timestamp (12 + 16), macs.
	offEphemeral = 8
	offStatic    = offEphemeral + 32
	offTimestamp = offStatic + 32 + chacha20poly1305.Overhead
	offMACs      = offTimestamp + 12 + chacha20poly1305.Overhead
)

var initialChainKey, initialHash = func() ([blake2s.Size]byte, [blake2s.Size]byte) {
	ck := blake2s.Sum256([]byte(noiseConstruction))
	return ck, mixHash(ck, []byte(wgIdentifier))
}()

func mixHash(h [blake2s.Size]byte, data []byte) [blake2s.Size]byte {
	d, _ := blake2s.New256(nil)
	d.Write(h[:])
	d.Write(data)
	var out [blake2s.Size]byte
	d.Sum(out[:0])
	return out
}

func hmacBlake2s(key []byte, in ...[]byte) [blake2s.Size]byte {
	m := hmac.New(func() hash.Hash { h, _ := blake2s.New256(nil); return h }, key)
	for _, b := range in {
		m.Write(b)
	}
	var out [blake2s.Size]byte
	m.Sum(out[:0])
	return out
}

// kdf2 is the Noise HKDF with two outputs.
func kdf2(key, input []byte) (t0, t1 [blake2s.Size]byte) {
	prk := hmacBlake2s(key, input)
	t0 = hmacBlake2s(prk[:], []byte{1})
	t1 = hmacBlake2s(prk[:], t0[:], []byte{2})
	return t0, t1
}

// initiatorKey returns the static public key of the sender of the
// handshake initiation msg addressed to the holder of priv, and whether
// the sender proved it holds the matching private key (the timestamp
// decrypts only with the two static keys' shared secret). It does what
// the responder does first, no more: it keeps no state and answers
// nothing.
func initiatorKey(priv wgtypes.Key, msg []byte) (wgtypes.Key, bool) {
	if len(msg) != initiationSize || msg[0] != msgInitiation {
		return wgtypes.Key{}, false
	}
	pub := priv.PublicKey()
	ephemeral := msg[offEphemeral:offStatic]
	h := mixHash(initialHash, pub[:])
	h = mixHash(h, ephemeral)
	prk := hmacBlake2s(initialChainKey[:], ephemeral)
	ck := hmacBlake2s(prk[:], []byte{1}) // KDF1

	ss, err := curve25519.X25519(priv[:], ephemeral)
	if err != nil {
		return wgtypes.Key{}, false
	}
	ck, key := kdf2(ck[:], ss)
	aead, _ := chacha20poly1305.New(key[:])
	var zeroNonce [chacha20poly1305.NonceSize]byte
	static, err := aead.Open(nil, zeroNonce[:], msg[offStatic:offTimestamp], h[:])
	if err != nil || len(static) != 32 {
		return wgtypes.Key{}, false
	}
	h = mixHash(h, msg[offStatic:offTimestamp])

	ss, err = curve25519.X25519(priv[:], static)
	if err != nil {
		return wgtypes.Key{}, false
	}
	_, key = kdf2(ck[:], ss)
	aead, _ = chacha20poly1305.New(key[:])
	if _, err := aead.Open(nil, zeroNonce[:], msg[offTimestamp:offMACs], h[:]); err != nil {
		return wgtypes.Key{}, false
	}
	return wgtypes.Key(static), true
}
