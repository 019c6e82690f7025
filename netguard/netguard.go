// Package netguard is BatchSender's SSRF guard: it decides which network
// addresses outgoing requests made on behalf of a project may reach.
//
// By default nothing internal is reachable: loopback, private (RFC 1918 and
// fc00::/7), link-local, CGNAT, multicast, unspecified, broadcast, reserved,
// benchmarking and documentation ranges, the IPv6 forms that embed such an
// IPv4 address (IPv4-mapped, IPv4-compatible, NAT64, 6to4), and cloud
// metadata addresses. The decision is made on the resolved address at dial
// time (see Dialer), so DNS names, odd IP spellings and redirects cannot get
// around it. Only the operator can lift it, with
// BATCHSENDER_ALLOW_PRIVATE_NETWORKS=true; cloud metadata addresses stay
// blocked even then, because no webhook or provider API lives there and they
// hand out the machine's cloud credentials.
//
// Not yet good: the block lists are static (no operator allow/deny list of
// CIDRs), and DNS rebinding is defeated only because the check runs on the
// very address being connected to, not by pinning DNS answers.
package netguard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// BlockedError reports a destination the guard refused.
type BlockedError struct {
	// Addr is the refused address. It is the zero Addr when a host name was
	// refused before resolution (see CheckHost).
	Addr netip.Addr
	// Host is the refused host name when Addr is zero.
	Host string
	// Kind names the range, for instance "a private address".
	Kind string
	// Always is true for addresses that stay blocked even when the operator
	// allows private networks (cloud metadata).
	Always bool
}

// Error implements error. The text is shown to batch owners, so it says what
// was blocked and who can change it.
func (e *BlockedError) Error() string {
	dest := e.Addr.String()
	if !e.Addr.IsValid() && e.Host != "" {
		dest = fmt.Sprintf("host %q", e.Host)
	}
	if e.Always {
		return fmt.Sprintf("destination %s is %s; always blocked by the SSRF guard", dest, e.Kind)
	}
	return fmt.Sprintf("destination %s is %s; blocked by the SSRF guard (operator setting BATCHSENDER_ALLOW_PRIVATE_NETWORKS)", dest, e.Kind)
}

// IsBlocked reports whether err, or any error it wraps, is a *BlockedError.
func IsBlocked(err error) bool {
	var b *BlockedError
	return errors.As(err, &b)
}

// Check decides under the default policy (private networks not allowed)
// whether a connection may reach addr. It returns nil or a *BlockedError.
func Check(addr netip.Addr) error { return CheckPolicy(addr, false) }

// CheckPolicy is Check with the operator's setting: allowPrivate lifts every
// block except cloud metadata addresses.
func CheckPolicy(addr netip.Addr, allowPrivate bool) error {
	kind, always := classify(addr)
	if kind == "" || (allowPrivate && !always) {
		return nil
	}
	return &BlockedError{Addr: addr, Kind: kind, Always: always}
}

type rng struct {
	p    netip.Prefix
	kind string
}

func mustPrefixes(kind string, cidrs ...string) []rng {
	out := make([]rng, len(cidrs))
	for i, c := range cidrs {
		out[i] = rng{netip.MustParsePrefix(c), kind}
	}
	return out
}

func join(lists ...[]rng) []rng {
	var out []rng
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}

// metadata lists cloud metadata endpoints. They are checked before the
// ranges so the reason names them, and they stay blocked when private
// networks are allowed. 168.63.129.16 (Azure WireServer) is a public address
// that only the cloud host answers.
var metadata = map[netip.Addr]bool{
	netip.MustParseAddr("169.254.169.254"): true, // AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
	netip.MustParseAddr("169.254.170.2"):   true, // AWS ECS task metadata
	netip.MustParseAddr("169.254.169.253"): true, // AWS VPC DNS
	netip.MustParseAddr("169.254.169.123"): true, // AWS time sync
	netip.MustParseAddr("169.254.169.250"): true, // AWS IPv4 DNS of EKS nodes
	netip.MustParseAddr("100.100.100.200"): true, // Alibaba Cloud
	netip.MustParseAddr("192.0.0.192"):     true, // Oracle Cloud (classic)
	netip.MustParseAddr("168.63.129.16"):   true, // Azure WireServer
	netip.MustParseAddr("fd00:ec2::254"):   true, // AWS IMDS over IPv6
	netip.MustParseAddr("fd00:ec2::23"):    true, // AWS DNS over IPv6
	netip.MustParseAddr("fd00:ec2::123"):   true, // AWS time sync over IPv6
	netip.MustParseAddr("fd20:ce::254"):    true, // GCP metadata over IPv6
}

// blocked4 holds the IPv4 ranges, most specific first where they overlap so
// the reason is the precise one (IANA IPv4 special-purpose registry).
var blocked4 = join(
	mustPrefixes("the broadcast address", "255.255.255.255/32"),
	mustPrefixes("the unspecified address", "0.0.0.0/32"),
	mustPrefixes("a \"this network\" address", "0.0.0.0/8"),
	mustPrefixes("a loopback address", "127.0.0.0/8"),
	mustPrefixes("a private address", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"),
	mustPrefixes("a link-local address", "169.254.0.0/16"),
	mustPrefixes("a carrier-grade NAT (CGNAT) address", "100.64.0.0/10"),
	mustPrefixes("a documentation address", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"),
	mustPrefixes("a benchmarking address", "198.18.0.0/15"),
	mustPrefixes("an IETF protocol assignment address", "192.0.0.0/24"),
	mustPrefixes("a deprecated 6to4 relay address", "192.88.99.0/24"),
	mustPrefixes("a multicast address", "224.0.0.0/4"),
	mustPrefixes("a reserved address", "240.0.0.0/4"),
)

// blocked6 holds the native IPv6 ranges (IANA IPv6 special-purpose
// registry). Ranges that embed an IPv4 address are handled in classify.
var blocked6 = join(
	mustPrefixes("the unspecified address", "::/128"),
	mustPrefixes("a loopback address", "::1/128"),
	mustPrefixes("a private (unique local) address", "fc00::/7"),
	mustPrefixes("a link-local address", "fe80::/10"),
	mustPrefixes("a deprecated site-local address", "fec0::/10"),
	mustPrefixes("a multicast address", "ff00::/8"),
	mustPrefixes("a discard-only address", "100::/64"),
	mustPrefixes("a documentation address", "2001:db8::/32", "3fff::/20"),
	mustPrefixes("a benchmarking address", "2001:2::/48"),
	mustPrefixes("a Teredo address", "2001::/32"),
	// The rest of 2001::/23 holds ORCHID, AS112 and other protocol
	// assignments: nothing a webhook receiver lives on.
	mustPrefixes("an IETF protocol assignment address", "2001::/23"),
	mustPrefixes("a local-use NAT64 address", "64:ff9b:1::/48"),
	mustPrefixes("an SRv6 SID address", "5f00::/16"),
	// IPv4-compatible addresses (deprecated by RFC 4291) are never routed.
	mustPrefixes("an IPv4-compatible IPv6 address", "::/96"),
)

var (
	nat64   = netip.MustParsePrefix("64:ff9b::/96")
	sixTo4  = netip.MustParsePrefix("2002::/16")
	mapped4 = netip.MustParsePrefix("::ffff:0:0/96")
)

// classify returns the kind of blocked range addr is in ("" when allowed)
// and whether it stays blocked even when private networks are allowed.
func classify(addr netip.Addr) (kind string, always bool) {
	if !addr.IsValid() {
		return "an invalid address", false
	}
	addr = addr.WithZone("")
	if metadata[addr] {
		return "a cloud metadata address", true
	}
	if addr.Is4() {
		for _, r := range blocked4 {
			if r.p.Contains(addr) {
				return r.kind, false
			}
		}
		return "", false
	}
	// IPv6 forms that carry an IPv4 address are judged by that address.
	switch {
	case mapped4.Contains(addr):
		return embedded("IPv4-mapped", addr.Unmap())
	case nat64.Contains(addr):
		b := addr.As16()
		return embedded("NAT64", netip.AddrFrom4([4]byte(b[12:16])))
	case sixTo4.Contains(addr):
		b := addr.As16()
		return embedded("6to4", netip.AddrFrom4([4]byte(b[2:6])))
	}
	for _, r := range blocked6 {
		if r.p.Contains(addr) {
			return r.kind, false
		}
	}
	return "", false
}

func embedded(form string, v4 netip.Addr) (string, bool) {
	kind, always := classify(v4)
	if kind == "" {
		return "", false
	}
	return fmt.Sprintf("an %s IPv6 form of %s (%s)", form, v4, kind), always
}

// Dialer returns a dial function that refuses, before connecting, any
// address the policy blocks. The check runs in net.Dialer.Control, that is
// on the IP address actually being connected to after DNS resolution, for
// every address tried. Only TCP and UDP networks are allowed. A refused dial
// returns an error for which IsBlocked is true.
func Dialer(allowPrivate bool, timeout time.Duration) func(ctx context.Context, network, address string) (net.Conn, error) {
	d := &net.Dialer{
		Timeout:   timeout,
		KeepAlive: 30 * time.Second,
		Control: func(network, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("checking destination %q: %w", address, err)
			}
			return CheckPolicy(ap.Addr(), allowPrivate)
		},
	}
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		switch network {
		case "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6":
		default:
			return nil, fmt.Errorf("dialing %s %s: network type not allowed by the SSRF guard", network, address)
		}
		return d.DialContext(ctx, network, address)
	}
}

// CheckRemote wraps a dial function with a second check, after connecting,
// of the address the connection actually reached: the guard then holds
// even when the host hands over a dialer that does not check (a plain
// net.Dialer). A refused connection is closed before anything is written
// on it, and its error is a *net.OpError for which IsBlocked is true.
func CheckRemote(dial func(ctx context.Context, network, address string) (net.Conn, error), allowPrivate bool) func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		c, err := dial(ctx, network, address)
		if err != nil {
			return nil, err
		}
		if ap, perr := netip.ParseAddrPort(c.RemoteAddr().String()); perr == nil {
			if err := CheckPolicy(ap.Addr(), allowPrivate); err != nil {
				_ = c.Close()
				return nil, &net.OpError{Op: "dial", Net: network, Err: err}
			}
		}
		return c, nil
	}
}
