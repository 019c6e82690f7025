package netguard

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// These addresses are only ever passed to Check, never dialled.
var blockedCases = []struct {
	addr string
	kind string
}{
	{"127.0.0.1", "loopback"},
	{"127.255.255.254", "loopback"},
	{"::1", "loopback"},
	{"10.0.0.1", "private"},
	{"172.16.0.1", "private"},
	{"172.31.255.255", "private"},
	{"192.168.1.1", "private"},
	{"fc00::1", "private"},
	{"fd12:3456::1", "private"},
	{"169.254.1.1", "link-local"},
	{"fe80::1", "link-local"},
	{"fe80::1%eth0", "link-local"},
	{"100.64.0.1", "CGNAT"},
	{"100.127.255.255", "CGNAT"},
	{"224.0.0.1", "multicast"},
	{"239.255.255.250", "multicast"},
	{"ff02::1", "multicast"},
	{"0.0.0.0", "unspecified"},
	{"::", "unspecified"},
	{"0.1.2.3", "this network"},
	{"255.255.255.255", "broadcast"},
	{"240.0.0.1", "reserved"},
	{"192.0.2.10", "documentation"},
	{"198.51.100.7", "documentation"},
	{"203.0.113.9", "documentation"},
	{"2001:db8::1", "documentation"},
	{"198.18.0.1", "benchmarking"},
	{"198.19.255.255", "benchmarking"},
	{"192.0.0.8", "IETF"},
	{"169.254.169.254", "cloud metadata"},
	{"169.254.170.2", "cloud metadata"},
	{"100.100.100.200", "cloud metadata"},
	{"168.63.129.16", "cloud metadata"},
	{"fd00:ec2::254", "cloud metadata"},
	{"fd20:ce::254", "cloud metadata"},
	{"::ffff:127.0.0.1", "IPv4-mapped IPv6 form of 127.0.0.1 (a loopback"},
	{"::ffff:10.1.2.3", "IPv4-mapped"},
	{"::ffff:169.254.169.254", "cloud metadata"},
	{"::127.0.0.1", "IPv4-compatible"},
	{"::8.8.8.8", "IPv4-compatible"},
	{"64:ff9b::7f00:1", "NAT64 IPv6 form of 127.0.0.1"},
	{"64:ff9b::a9fe:a9fe", "cloud metadata"},
	{"64:ff9b:1::1", "local-use NAT64"},
	{"2002:7f00:1::1", "6to4 IPv6 form of 127.0.0.1"},
	{"2002:c0a8:0101::1", "6to4 IPv6 form of 192.168.1.1"},
	{"2001::1", "Teredo"},
	{"2001:2::1", "benchmarking"},
	{"100::1", "discard"},
	{"fec0::1", "site-local"},
}

func TestCheckBlocksInternalRanges(t *testing.T) {
	t.Parallel()
	for _, tc := range blockedCases {
		t.Run(tc.addr, func(t *testing.T) {
			t.Parallel()
			err := Check(netip.MustParseAddr(tc.addr))
			if err == nil {
				t.Fatalf("Check(%s) = nil, want blocked", tc.addr)
			}
			if !IsBlocked(err) {
				t.Fatalf("IsBlocked(%v) = false", err)
			}
			if !strings.Contains(err.Error(), tc.kind) {
				t.Fatalf("Check(%s) = %q, want the reason to mention %q", tc.addr, err, tc.kind)
			}
		})
	}
}

func TestCheckAllowsPublicAddresses(t *testing.T) {
	t.Parallel()
	for _, s := range []string{
		"8.8.8.8", "1.1.1.1", "93.184.216.34", "100.63.255.255", "100.128.0.0",
		"172.15.255.255", "172.32.0.0", "169.253.255.255", "198.17.255.255", "223.255.255.255",
		"2606:4700:4700::1111", "2a00:1450:4001:82b::200e",
		"::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1",
	} {
		if err := Check(netip.MustParseAddr(s)); err != nil {
			t.Errorf("Check(%s) = %v, want nil", s, err)
		}
	}
}

func TestCheckPolicyAllowPrivateKeepsMetadataBlocked(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"127.0.0.1", "10.0.0.1", "::1", "fe80::1", "100.64.1.1"} {
		if err := CheckPolicy(netip.MustParseAddr(s), true); err != nil {
			t.Errorf("CheckPolicy(%s, true) = %v, want nil", s, err)
		}
	}
	for _, s := range []string{"169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254", "100.100.100.200"} {
		err := CheckPolicy(netip.MustParseAddr(s), true)
		if !IsBlocked(err) || !strings.Contains(err.Error(), "always blocked") {
			t.Errorf("CheckPolicy(%s, true) = %v, want always blocked", s, err)
		}
	}
}

func TestBlockedErrorNamesTheOperatorSetting(t *testing.T) {
	t.Parallel()
	err := Check(netip.MustParseAddr("10.0.0.1"))
	want := "destination 10.0.0.1 is a private address; blocked by the SSRF guard (operator setting BATCHSENDER_ALLOW_PRIVATE_NETWORKS)"
	if err == nil || err.Error() != want {
		t.Fatalf("Check(10.0.0.1) = %v, want %q", err, want)
	}
	if IsBlocked(errors.New("other")) || IsBlocked(nil) {
		t.Fatal("IsBlocked is true for an unrelated error")
	}
}

func TestCheckInvalidAddrIsBlocked(t *testing.T) {
	t.Parallel()
	if err := Check(netip.Addr{}); !IsBlocked(err) {
		t.Fatalf("Check(zero) = %v, want blocked", err)
	}
}

func TestParseIPv4Loose(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"127.0.0.1":         "127.0.0.1",
		"127.1":             "127.0.0.1",
		"0x7f.1":            "127.0.0.1",
		"0x7f.0.0.1":        "127.0.0.1",
		"0177.0.0.1":        "127.0.0.1",
		"2130706433":        "127.0.0.1",
		"0x7f000001":        "127.0.0.1",
		"017700000001":      "127.0.0.1",
		"127.0.1":           "127.0.0.1",
		"10.1.65535":        "10.1.255.255",
		"127.0.0.1.":        "127.0.0.1",
		"0":                 "0.0.0.0",
		"0x":                "0.0.0.0",
		"0xA9.254.0xa9.254": "169.254.169.254",
	} {
		got, ok := ParseIPv4Loose(in)
		if !ok || got.String() != want {
			t.Errorf("ParseIPv4Loose(%q) = %v, %v; want %s", in, got, ok, want)
		}
	}
	for _, in := range []string{"", ".", "1.2.3.4.5", "256.1.1.1", "1.2.3.256", "1.2.65536", "4294967296", "08.1.1.1", "0xg.1", "1..1", "a.b.c.d", "-1"} {
		if got, ok := ParseIPv4Loose(in); ok {
			t.Errorf("ParseIPv4Loose(%q) = %v, want failure", in, got)
		}
	}
}

func TestCheckHost(t *testing.T) {
	t.Parallel()
	blocked := []string{
		"127.0.0.1", "::1", "::ffff:127.0.0.1", "0x7f.0.0.1", "0x7f.1", "2130706433", "127.1",
		"0177.0.0.1", "localhost", "LOCALHOST", "localhost.", "api.localhost", "10.0.0.1",
		"169.254.169.254", "metadata.google.internal", "0xa9.0xfe.0xa9.0xfe",
	}
	for _, h := range blocked {
		if err := CheckHost(h, false); !IsBlocked(err) {
			t.Errorf("CheckHost(%q, false) = %v, want blocked", h, err)
		}
	}
	invalid := []string{"", "1.2.3.4.5", "fe80::1%eth0", "exa mple.com", "a..b", "ex@mple.com", "0x08.8.8.8", "134744072"}
	for _, h := range invalid {
		err := CheckHost(h, false)
		if err == nil || IsBlocked(err) {
			t.Errorf("CheckHost(%q, false) = %v, want a non-blocked validation error", h, err)
		}
	}
	for _, h := range []string{"example.com", "hooks.example.com.", "8.8.8.8", "2606:4700::1111", "a_b.example", "xn--bcher-kva.example", "1password.com"} {
		if err := CheckHost(h, false); err != nil {
			t.Errorf("CheckHost(%q, false) = %v, want nil", h, err)
		}
	}
	for _, h := range []string{"localhost", "127.0.0.1", "::1", "10.0.0.1"} {
		if err := CheckHost(h, true); err != nil {
			t.Errorf("CheckHost(%q, true) = %v, want nil", h, err)
		}
	}
	if err := CheckHost("127.1", true); err == nil {
		t.Error("CheckHost(127.1, true) = nil, want non-standard spelling error")
	}
	if err := CheckHost("metadata.google.internal", true); !IsBlocked(err) {
		t.Errorf("CheckHost(metadata.google.internal, true) = %v, want blocked", err)
	}
}

// listen starts a loopback listener that accepts and closes connections.
func listen(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	t.Cleanup(func() { _ = ln.Close(); <-done })
	return ln.Addr().String()
}

func TestDialerBlocksLoopbackByDefault(t *testing.T) {
	t.Parallel()
	addr := listen(t)
	dial := Dialer(false, 2*time.Second)
	conn, err := dial(context.Background(), "tcp", addr)
	if err == nil {
		_ = conn.Close()
		t.Fatal("dial to loopback succeeded under the default policy")
	}
	if !IsBlocked(err) || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("dial error = %v, want the guard's loopback reason", err)
	}
}

func TestDialerBlocksLoopbackInEveryForm(t *testing.T) {
	t.Parallel()
	// Control runs before connect, so none of these reaches a socket; the
	// listener only makes sure a connection would have been possible.
	addr := listen(t)
	_, port, _ := net.SplitHostPort(addr)
	dial := Dialer(false, 2*time.Second)
	for _, host := range []string{"127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1", "0.0.0.0"} {
		conn, err := dial(context.Background(), "tcp", net.JoinHostPort(host, port))
		if err == nil {
			_ = conn.Close()
			t.Fatalf("dial to %s succeeded under the default policy", host)
		}
		if !IsBlocked(err) {
			t.Fatalf("dial to %s: %v, want blocked", host, err)
		}
	}
}

func TestDialerAllowPrivateConnectsToLoopback(t *testing.T) {
	t.Parallel()
	addr := listen(t)
	dial := Dialer(true, 2*time.Second)
	conn, err := dial(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatalf("dial with private networks allowed: %v", err)
	}
	_ = conn.Close()
}

func TestDialerRefusesOtherNetworks(t *testing.T) {
	t.Parallel()
	dial := Dialer(true, time.Second)
	if _, err := dial(context.Background(), "unix", "/tmp/x.sock"); err == nil {
		t.Fatal("dial of a unix socket succeeded")
	}
}

func FuzzCheck(f *testing.F) {
	for _, tc := range blockedCases {
		f.Add(tc.addr)
	}
	for _, s := range []string{"8.8.8.8", "0x7f.1", "2130706433", "127.1", "0177.0.0.1", "::ffff:8.8.8.8", "localhost", "example.com", "1.2.3.4.5"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if addr, err := netip.ParseAddr(s); err == nil {
			err := Check(addr)
			if err != nil && !IsBlocked(err) {
				t.Fatalf("Check(%s) returned a non-blocked error %v", addr, err)
			}
			// An IPv4 address and its IPv4-mapped form get the same verdict.
			if addr.Is4() {
				mapped := netip.AddrFrom16(addr.As16())
				if (Check(mapped) == nil) != (err == nil) {
					t.Fatalf("Check(%s) and Check(%s) disagree", addr, mapped)
				}
			}
			// Under the default policy anything the standard library calls
			// internal is blocked.
			a := addr.Unmap().WithZone("")
			if err == nil && (a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() ||
				a.IsLinkLocalMulticast() || a.IsMulticast() || a.IsUnspecified() || a.IsInterfaceLocalMulticast()) {
				t.Fatalf("Check(%s) allowed an internal address", addr)
			}
		}
		if a, ok := ParseIPv4Loose(s); ok {
			if !a.Is4() {
				t.Fatalf("ParseIPv4Loose(%q) = %v, not IPv4", s, a)
			}
		}
		// CheckHost never allows a host whose loose IPv4 reading is blocked.
		if err := CheckHost(s, false); err == nil {
			if a, ok := ParseIPv4Loose(s); ok && Check(a) != nil {
				t.Fatalf("CheckHost(%q) allowed %s", s, a)
			}
			if n := strings.TrimSuffix(strings.ToLower(s), "."); n == "localhost" || strings.HasSuffix(n, ".localhost") {
				t.Fatalf("CheckHost(%q) allowed a localhost name", s)
			}
		}
	})
}

func TestCheckRemoteJudgesTheAddressReached(t *testing.T) {
	t.Parallel()
	addr := listen(t)
	plain := (&net.Dialer{Timeout: 2 * time.Second}).DialContext
	conn, err := CheckRemote(plain, false)(context.Background(), "tcp", addr)
	if err == nil {
		_ = conn.Close()
		t.Fatal("a plain dialer reached loopback through CheckRemote under the default policy")
	}
	var op *net.OpError
	if !IsBlocked(err) || !errors.As(err, &op) || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("error = %v, want a blocked *net.OpError naming loopback", err)
	}
	conn, err = CheckRemote(plain, true)(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatalf("with private networks allowed: %v", err)
	}
	_ = conn.Close()
}
