package webhook

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/batchsender/batchsender/sdk"
)

// benchReceiver answers 200 after reading the body, like a fast receiver.
func benchReceiver(b *testing.B) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	b.Cleanup(srv.Close)
	return srv
}

// BenchmarkSend measures signed deliveries per second through Send, one item
// per call as the engine makes them, many calls in flight, to a loopback
// receiver. Run: go test -run '^$' -bench . -benchtime 3s ./webhook
func BenchmarkSend(b *testing.B) {
	srv := benchReceiver(b)
	p := new(Provider)
	err := p.Provision(context.Background(), sdk.Env{
		Config:               []byte(`{"max_per_host":128}`),
		Secrets:              []byte(`{"signing_secret":"` + testSecret + `"}`),
		AllowPrivateNetworks: true,
		Now:                  time.Now,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = p.Close() })
	s, err := p.Compile([]byte(`{"url":"` + srv.URL + `/hook","headers":{"X-Source":"bench"}}`))
	if err != nil {
		b.Fatal(err)
	}
	data := []byte(`{"payload":{"type":"order.paid","data":{"id":42,"amount":1999,"currency":"EUR"}}}`)
	b.SetParallelism(32)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		items := []sdk.Item{{ID: "itm_01JBENCH000000000000000000", Attempt: 1, Data: data}}
		for pb.Next() {
			if r := s.Send(context.Background(), items); r[0].Outcome != sdk.OutcomeOK {
				b.Errorf("Send: %v %v", r[0].Outcome, r[0].Err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "items/s")
}

// BenchmarkBareClient is the ceiling: a plain net/http client loop, same
// receiver, same parallelism, no signing, validation or limits.
func BenchmarkBareClient(b *testing.B) {
	srv := benchReceiver(b)
	tr := &http.Transport{MaxIdleConnsPerHost: 128, DisableCompression: true}
	b.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr}
	body := []byte(`{"type":"order.paid","data":{"id":42,"amount":1999,"currency":"EUR"}}`)
	b.SetParallelism(32)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Post(srv.URL+"/hook", "application/json", bytes.NewReader(body))
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "items/s")
}
