package tunnel

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"testing"

	"golang.zx2c4.com/wireguard/conn"
	wgdevice "golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// TestInitiatorKey reads the initiator's key from initiations that
// wireguard-go itself makes, and refuses a tampered or misaddressed one.
func TestInitiatorKey(t *testing.T) {
	initPriv, respPriv, other := mustPriv(t), mustPriv(t), mustPriv(t)
	dev := wgdevice.NewDevice(tuntest.NewChannelTUN().TUN(), conn.NewDefaultBind(), wgdevice.NewLogger(wgdevice.LogLevelSilent, ""))
	defer dev.Close()
	pub := respPriv.PublicKey()
	if err := dev.IpcSet(fmt.Sprintf("private_key=%s\npublic_key=%s\n", hex.EncodeToString(initPriv[:]), hex.EncodeToString(pub[:]))); err != nil {
		t.Fatal(err)
	}
	peer := dev.LookupPeer(wgdevice.NoisePublicKey(pub))
	if peer == nil {
		t.Fatal("peer not created")
	}
	msg, err := dev.CreateMessageInitiation(peer)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := binary.Write(&b, binary.LittleEndian, msg); err != nil {
		t.Fatal(err)
	}
	pkt := b.Bytes()
	if got, ok := initiatorKey(respPriv, pkt); !ok || got != initPriv.PublicKey() {
		t.Fatalf("initiatorKey = %s, %v; want the initiator's key", ShortKey(got), ok)
	}
	if _, ok := initiatorKey(other, pkt); ok {
		t.Error("an initiation for another key was read")
	}
	tampered := bytes.Clone(pkt)
	tampered[offTimestamp] ^= 1
	if _, ok := initiatorKey(respPriv, tampered); ok {
		t.Error("a tampered timestamp was accepted")
	}
	if _, ok := initiatorKey(respPriv, pkt[:100]); ok {
		t.Error("a short packet was accepted")
	}
}

func mustPriv(t *testing.T) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}
