package batchsender

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
	"time"
)

// crockford is Crockford's base32 alphabet in lower case: no i, l, o, u.
const crockford = "0123456789abcdefghjkmnpqrstvwxyz"

var idMu sync.Mutex
var idLast struct {
	ms   uint64
	rand [10]byte
}

// NewID returns prefix + "_" + a 26-character, time-ordered, random ID in
// the form of a ULID. IDs made in the same millisecond by this process stay
// ordered, so IDs double as stable cursors for pagination. IDs never contain
// '.', so they are safe as Standard Webhooks message IDs.
func NewID(prefix string) string {
	return prefix + "_" + newULID(time.Now())
}

func newULID(now time.Time) string {
	ms := uint64(now.UnixMilli())
	idMu.Lock()
	if ms <= idLast.ms {
		ms = idLast.ms
		// Increment the random part so IDs within one millisecond stay ordered.
		for i := len(idLast.rand) - 1; i >= 0; i-- {
			idLast.rand[i]++
			if idLast.rand[i] != 0 {
				break
			}
		}
	} else {
		idLast.ms = ms
		_, _ = rand.Read(idLast.rand[:])
	}
	var raw [16]byte
	binary.BigEndian.PutUint16(raw[0:2], uint16(ms>>32))
	binary.BigEndian.PutUint32(raw[2:6], uint32(ms))
	copy(raw[6:], idLast.rand[:])
	idMu.Unlock()

	// 128 bits → 26 base32 characters, the first carrying 3 bits.
	var out [26]byte
	hi := binary.BigEndian.Uint64(raw[0:8])
	lo := binary.BigEndian.Uint64(raw[8:16])
	for i := 25; i >= 0; i-- {
		out[i] = crockford[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return string(out[:])
}
