package netguard

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ParseIPv4Loose parses the IPv4 spellings that C resolvers (inet_aton) and
// browsers (the WHATWG URL standard) accept besides dotted decimal: one to
// four parts, each decimal, octal with a leading 0, or hexadecimal with 0x,
// the last part filling the remaining bytes ("127.1", "0x7f.0.0.1",
// "0177.0.0.1", "2130706433"). A single trailing dot is ignored, as WHATWG
// does. Such spellings are how requests sneak past guards that only parse
// the standard form.
func ParseIPv4Loose(s string) (netip.Addr, bool) {
	s = strings.TrimSuffix(s, ".")
	if s == "" {
		return netip.Addr{}, false
	}
	parts := strings.Split(s, ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	vals := make([]uint64, len(parts))
	for i, p := range parts {
		v, ok := parseIPv4Part(p)
		if !ok {
			return netip.Addr{}, false
		}
		vals[i] = v
	}
	// Every part but the last is one byte; the last fills what is left.
	var n uint64
	for _, v := range vals[:len(vals)-1] {
		if v > 255 {
			return netip.Addr{}, false
		}
		n = n<<8 | v
	}
	last := vals[len(vals)-1]
	restBits := uint(8 * (5 - len(vals)))
	if last >= 1<<restBits {
		return netip.Addr{}, false
	}
	n = n<<restBits | last
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}), true
}

func parseIPv4Part(p string) (uint64, bool) {
	if p == "" {
		return 0, false
	}
	base := 10
	digits := p
	switch {
	case len(p) >= 2 && (p[:2] == "0x" || p[:2] == "0X"):
		base, digits = 16, p[2:]
		if digits == "" {
			// WHATWG reads a bare "0x" as zero.
			return 0, true
		}
	case len(p) >= 2 && p[0] == '0':
		base, digits = 8, p[1:]
	}
	for _, c := range digits {
		if !isDigitIn(c, base) {
			return 0, false
		}
	}
	v, err := strconv.ParseUint(digits, base, 64)
	if err != nil || v > 0xffffffff {
		return 0, false
	}
	return v, true
}

func isDigitIn(c rune, base int) bool {
	switch base {
	case 8:
		return c >= '0' && c <= '7'
	case 10:
		return c >= '0' && c <= '9'
	}
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// endsInNumber reports whether the last label of host is numeric
// (decimal digits or 0x-hex), which WHATWG URL parsing takes to mean that
// the whole host must be an IPv4 address.
func endsInNumber(host string) bool {
	host = strings.TrimSuffix(host, ".")
	last := host[strings.LastIndexByte(host, '.')+1:]
	if last == "" {
		return false
	}
	if strings.HasPrefix(last, "0x") || strings.HasPrefix(last, "0X") {
		for _, c := range last[2:] {
			if !isDigitIn(c, 16) {
				return false
			}
		}
		return true
	}
	for _, c := range last {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// CheckHost checks the host part of a URL (as url.URL.Hostname returns it,
// without brackets or port) before anything is resolved, so bad input is
// refused at ingest with a clear reason. It refuses:
//   - IP literals the policy blocks (through CheckPolicy);
//   - non-standard IP spellings ("0x7f.1", "2130706433", "127.1"),
//     whatever they mean, because they are ambiguous and Go's resolver
//     would send them to DNS;
//   - names that end in a number but are no IPv4 address ("1.2.3.4.5");
//   - "localhost" and "*.localhost", unless allowPrivate;
//   - cloud metadata names such as "metadata.google.internal", always;
//   - IPv6 zones and characters that are not allowed in host names.
//
// A name that passes may still resolve to a blocked address: the Dialer
// refuses it then. Errors for blocked destinations satisfy IsBlocked.
func CheckHost(host string, allowPrivate bool) error {
	if host == "" {
		return fmt.Errorf("host is empty")
	}
	if strings.ContainsRune(host, '%') {
		return fmt.Errorf("host %q has an IPv6 zone, which is not allowed", host)
	}
	if addr, err := netip.ParseAddr(host); err == nil {
		return CheckPolicy(addr, allowPrivate)
	}
	name := strings.ToLower(host)
	if endsInNumber(name) {
		addr, ok := ParseIPv4Loose(name)
		if !ok {
			return fmt.Errorf("host %q looks like an IP address but is not a valid one", host)
		}
		if err := CheckPolicy(addr, allowPrivate); err != nil {
			return fmt.Errorf("host %q is a non-standard spelling of %s: %w", host, addr, err)
		}
		return fmt.Errorf("host %q is a non-standard spelling of IP address %s; write it as %s", host, addr, addr)
	}
	if len(name) > 253 {
		return fmt.Errorf("host name is longer than 253 characters")
	}
	trimmed := strings.TrimSuffix(name, ".")
	for _, label := range strings.Split(trimmed, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("host %q has an empty or over-long label", host)
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("host %q contains %q, which is not allowed in a host name (use the xn-- form for international names)", host, c)
			}
		}
	}
	if metadataNames[trimmed] {
		return &BlockedError{Host: host, Kind: "a cloud metadata name", Always: true}
	}
	if !allowPrivate && (trimmed == "localhost" || strings.HasSuffix(trimmed, ".localhost")) {
		return &BlockedError{Host: host, Kind: "a loopback name (localhost)"}
	}
	return nil
}

// metadataNames are host names of cloud metadata services.
var metadataNames = map[string]bool{
	"metadata.google.internal":   true,
	"metadata.goog":              true,
	"metadata":                   true,
	"instance-data":              true, // AWS
	"instance-data.ec2.internal": true,
}
