package httpapi_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// BenchmarkUploadCSV measures the whole upload path of a large list: HTTP,
// CSV reading, the webhook provider's ValidateItem per row, and the SQLite
// inserts. It reports rows/s and the process's CPU time per row (client
// included), which depends far less on other load on the machine.
func BenchmarkUploadCSV(b *testing.B) {
	const rows = 100_000
	bd := setup(b)
	secret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	post := func(path, contentType string, body []byte) []byte {
		req, _ := http.NewRequest("POST", bd.srv.URL+path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+bd.key)
		req.Header.Set("Content-Type", contentType)
		res, err := bd.srv.Client().Do(req)
		if err != nil {
			b.Fatal(err)
		}
		defer res.Body.Close()
		out, _ := io.ReadAll(res.Body)
		if res.StatusCode >= 300 {
			b.Fatalf("%s: %d %s", path, res.StatusCode, out)
		}
		return out
	}
	conn, _ := json.Marshal(map[string]any{"provider": "webhook.http", "name": "hooks", "secrets": map[string]any{"signing_secret": secret}})
	post("/v1/connections", "application/json", conn)
	var csv bytes.Buffer
	csv.WriteString("url,payload.order,payload.customer\n")
	for i := range rows {
		fmt.Fprintf(&csv, "https://example.com/hooks/%d,%d,cust-%d\n", i%50, i, i)
	}
	draftBody := []byte(`{"module":"webhook","connection":"hooks"}`)
	b.ResetTimer()
	cpu0 := cpuTime()
	for b.Loop() {
		var d struct{ ID string }
		if err := json.Unmarshal(post("/v1/batches", "application/json", draftBody), &d); err != nil {
			b.Fatal(err)
		}
		post("/v1/batches/"+d.ID+"/items", "text/csv", csv.Bytes())
	}
	b.ReportMetric(float64(rows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
	b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/1e3/float64(rows*b.N), "cpu-µs/row")
}

// cpuTime returns the CPU time (user and system) the process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
