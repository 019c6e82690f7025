package httpapi_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestOperationalEndpoints(t *testing.T) {
	t.Parallel()
	b := setup(t)

	t.Run("HealthzIsOK", func(t *testing.T) {
		r := b.do(t, call{method: "GET", path: "/healthz", key: keyOf("")}).expect(t, http.StatusOK)
		if strings.TrimSpace(string(r.body)) != "ok" {
			t.Fatalf("healthz body %q", r.body)
		}
	})
	t.Run("ReadyzIsOKWhenReady", func(t *testing.T) {
		b.do(t, call{method: "GET", path: "/readyz", key: keyOf("")}).expect(t, http.StatusOK)
	})
	t.Run("OpenAPIIsServed", func(t *testing.T) {
		r := b.do(t, call{method: "GET", path: "/openapi.json", key: keyOf("")}).expect(t, http.StatusOK)
		var doc map[string]any
		r.decode(t, &doc)
		if doc["openapi"] != "3.0.3" {
			t.Fatalf("openapi version %v", doc["openapi"])
		}
	})
	t.Run("MetricsCountRequestsByRouteAndStatus", func(t *testing.T) {
		b.do(t, call{method: "GET", path: "/v1/batches/nope"}).expect(t, http.StatusNotFound)
		r := b.do(t, call{method: "GET", path: "/metrics", key: keyOf("")}).expect(t, http.StatusOK)
		for _, want := range []string{
			`batchsender_http_requests_total{route="GET /healthz",status="200"} 1`,
			`batchsender_http_requests_total{route="GET /v1/batches/{id}",status="404"} 1`,
			`batchsender_http_request_duration_seconds_count{route="GET /healthz"} 1`,
			`batchsender_build_info{version="test-1"} 1`,
			"batchsender_engine_test_gauge 42",
		} {
			if !strings.Contains(string(r.body), want) {
				t.Errorf("metrics lack %q:\n%s", want, r.body)
			}
		}
		if !strings.HasPrefix(r.header.Get("Content-Type"), "text/plain; version=0.0.4") {
			t.Errorf("metrics Content-Type %q", r.header.Get("Content-Type"))
		}
	})
	t.Run("UnknownPathIs404Problem", func(t *testing.T) {
		b.do(t, call{method: "GET", path: "/v2/nothing", unrouted: true}).expectProblem(t, http.StatusNotFound, "/v2/nothing")
	})
	t.Run("WrongMethodIs405ProblemWithAllow", func(t *testing.T) {
		r := b.do(t, call{method: "DELETE", path: "/v1/batches", unrouted: true})
		r.expectProblem(t, http.StatusMethodNotAllowed, "DELETE")
		if allow := r.header.Get("Allow"); !strings.Contains(allow, "GET") || !strings.Contains(allow, "POST") {
			t.Fatalf("Allow %q", allow)
		}
	})
}

func TestReadyzAnswers503WhenNotReady(t *testing.T) {
	t.Parallel()
	b := setup(t, withReadyError(errors.New("database /secret/path is locked")))
	r := b.do(t, call{method: "GET", path: "/readyz", key: keyOf("")})
	p := r.expectProblem(t, http.StatusServiceUnavailable)
	if strings.Contains(p.Detail, "/secret/path") {
		t.Fatalf("readiness detail leaks the cause: %q", p.Detail)
	}
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// One request per /v1 route: none may answer without a valid key.
	routes := []struct{ method, path string }{
		{"GET", "/v1/modules"},
		{"POST", "/v1/connections"}, {"GET", "/v1/connections"}, {"GET", "/v1/connections/x"},
		{"POST", "/v1/batches"}, {"GET", "/v1/batches"}, {"GET", "/v1/batches/x"},
		{"POST", "/v1/batches/x/items"}, {"GET", "/v1/batches/x/items"},
		{"GET", "/v1/batches/x/items/y/attempts"}, {"GET", "/v1/batches/x/events"},
		{"POST", "/v1/batches/x/start"}, {"POST", "/v1/batches/x/pause"}, {"POST", "/v1/batches/x/resume"},
		{"POST", "/v1/batches/x/cancel"}, {"POST", "/v1/batches/x/retry-failed"},
	}
	wrong := b.key[:len(b.key)-2] + "zz"
	for _, rt := range routes {
		t.Run("MissingKey"+rt.method+rt.path, func(t *testing.T) {
			r := b.do(t, call{method: rt.method, path: rt.path, key: keyOf(""), badRequest: true})
			r.expectProblem(t, http.StatusUnauthorized, "Authorization: Bearer")
			if got := r.header.Get("WWW-Authenticate"); got != `Bearer realm="batchsender"` {
				t.Fatalf("WWW-Authenticate %q", got)
			}
		})
		t.Run("WrongKey"+rt.method+rt.path, func(t *testing.T) {
			r := b.do(t, call{method: rt.method, path: rt.path, key: &wrong, badRequest: true})
			r.expectProblem(t, http.StatusUnauthorized, "invalid API key")
			if got := r.header.Get("WWW-Authenticate"); !strings.Contains(got, `error="invalid_token"`) {
				t.Fatalf("WWW-Authenticate %q", got)
			}
		})
	}
	t.Run("BasicSchemeIsRefused", func(t *testing.T) {
		b.do(t, call{method: "GET", path: "/v1/batches", key: keyOf(""), header: map[string]string{"Authorization": "Basic " + b.key},
			badRequest: true}).expectProblem(t, http.StatusUnauthorized, "Bearer")
	})
	t.Run("UnknownKeyAndWrongSecretAnswerAlike", func(t *testing.T) {
		unknown := "bsk_aaaaaaaaaaaa_" + strings.Repeat("A", 43)
		r1 := b.do(t, call{method: "GET", path: "/v1/batches", key: &unknown, badRequest: true})
		r2 := b.do(t, call{method: "GET", path: "/v1/batches", key: &wrong, badRequest: true})
		if string(r1.body) != string(r2.body) {
			t.Fatalf("answers differ:\n%s\n%s", r1.body, r2.body)
		}
	})
	t.Run("ValidKeyPasses", func(t *testing.T) {
		b.do(t, call{method: "GET", path: "/v1/batches"}).expect(t, http.StatusOK)
		b.do(t, call{method: "GET", path: "/v1/batches", header: map[string]string{"Authorization": "bearer " + b.key}, badRequest: true}).
			expect(t, http.StatusOK)
	})
}

func TestModules(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var out struct {
		Data []struct {
			Module       string          `json:"module"`
			ID           string          `json:"id"`
			ItemSchema   json.RawMessage `json:"item_schema"`
			ConfigSchema json.RawMessage `json:"config_schema"`
		} `json:"data"`
	}
	b.do(t, call{method: "GET", path: "/v1/modules"}).expect(t, http.StatusOK).decode(t, &out)
	found := false
	for _, m := range out.Data {
		if m.ID == "test.echo" {
			found = true
			if m.Module != "test" || len(m.ItemSchema) == 0 || len(m.ConfigSchema) == 0 {
				t.Fatalf("module entry %+v", m)
			}
		}
	}
	if !found {
		t.Fatalf("test.echo not listed: %+v", out)
	}
}

func TestConnections(t *testing.T) {
	t.Parallel()
	b := setup(t)
	conn := b.connection(t, b.key, "hooks")

	t.Run("CreateShowsSecretNamesOnly", func(t *testing.T) {
		if !strings.HasPrefix(conn.ID, "") || conn.ID == "" || conn.Name != "hooks" || conn.Provider != "test.echo" || conn.Module != "test" {
			t.Fatalf("connection %+v", conn)
		}
		if !slices.Equal(conn.SecretNames, []string{"token"}) {
			t.Fatalf("secret_names %v", conn.SecretNames)
		}
		if string(conn.Config) != `{"region":"eu"}` {
			t.Fatalf("config %s", conn.Config)
		}
	})
	t.Run("SecretsAreSealedInTheStore", func(t *testing.T) {
		stored, err := b.store.ConnectionGetByID(t.Context(), conn.ID)
		if err != nil {
			t.Fatal(err)
		}
		plain, err := b.box.Open(stored.SecretsSealed)
		if err != nil {
			t.Fatalf("stored secrets do not open: %v", err)
		}
		var secrets map[string]string
		if err := json.Unmarshal(plain, &secrets); err != nil || secrets["token"] == "" {
			t.Fatalf("stored secrets %q: %v", plain, err)
		}
		if strings.Contains(string(stored.SecretsSealed), secrets["token"]) || strings.Contains(string(stored.Config), secrets["token"]) {
			t.Fatal("the store holds the plain secret")
		}
	})
	t.Run("GetByIDAndByName", func(t *testing.T) {
		for _, ref := range []string{conn.ID, "hooks"} {
			var got connectionDoc
			b.do(t, call{method: "GET", path: "/v1/connections/" + ref}).expect(t, http.StatusOK).decode(t, &got)
			if got.ID != conn.ID {
				t.Fatalf("GET %s gave %+v", ref, got)
			}
		}
	})
	t.Run("List", func(t *testing.T) {
		var got struct{ Data []connectionDoc }
		b.do(t, call{method: "GET", path: "/v1/connections"}).expect(t, http.StatusOK).decode(t, &got)
		if len(got.Data) != 1 || got.Data[0].ID != conn.ID {
			t.Fatalf("list %+v", got)
		}
		var other struct{ Data []connectionDoc }
		b.do(t, call{method: "GET", path: "/v1/connections", key: &b.keyB}).expect(t, http.StatusOK).decode(t, &other)
		if len(other.Data) != 0 {
			t.Fatalf("project beta sees alpha's connections: %+v", other)
		}
	})
	t.Run("OtherProjectGets404", func(t *testing.T) {
		b.do(t, call{method: "GET", path: "/v1/connections/" + conn.ID, key: &b.keyB}).expectProblem(t, http.StatusNotFound)
		b.do(t, call{method: "GET", path: "/v1/connections/hooks", key: &b.keyB}).expectProblem(t, http.StatusNotFound)
	})
	t.Run("DuplicateNameIs409", func(t *testing.T) {
		b.do(t, call{method: "POST", path: "/v1/connections", json: map[string]any{
			"provider": "test.echo", "name": "hooks", "secrets": map[string]any{"token": "t2-abcdefgh"},
		}}).expectProblem(t, http.StatusConflict)
		b.addSecret("t2-abcdefgh")
	})
	t.Run("SameNameInAnotherProjectIsFine", func(t *testing.T) {
		b.connection(t, b.keyB, "hooks")
	})
	bad := []struct {
		name     string
		body     map[string]any
		fragment string
	}{
		{"UnknownProvider", map[string]any{"provider": "sms.nope", "name": "x"}, `unknown provider "sms.nope"`},
		{"MissingProvider", map[string]any{"name": "x"}, "provider is required"},
		{"MissingName", map[string]any{"provider": "test.echo"}, "name is required"},
		{"BadName", map[string]any{"provider": "test.echo", "name": "has space"}, "name"},
		{"ProviderRefusesMissingSecret", map[string]any{"provider": "test.echo", "name": "x"}, "secrets.token is required"},
		{"ProviderRefusesConfig", map[string]any{"provider": "test.echo", "name": "x", "config": map[string]any{"region": "mars"},
			"secrets": map[string]any{"token": "abc-secret-1"}}, "config.region"},
		{"ProviderRefusesUnknownConfigField", map[string]any{"provider": "test.echo", "name": "x", "config": map[string]any{"colour": "red"},
			"secrets": map[string]any{"token": "abc-secret-1"}}, "colour"},
		{"ConfigNotObject", map[string]any{"provider": "test.echo", "name": "x", "config": []int{1}}, "config must be a JSON object"},
		{"UnknownField", map[string]any{"provider": "test.echo", "name": "x", "secret": map[string]any{}}, `unknown field "secret"`},
	}
	for _, tc := range bad {
		t.Run("Rejects"+tc.name, func(t *testing.T) {
			b.addSecret("abc-secret-1")
			b.do(t, call{method: "POST", path: "/v1/connections", json: tc.body, badRequest: true}).
				expectProblem(t, http.StatusBadRequest, tc.fragment)
		})
	}
	t.Run("RejectsMalformedJSON", func(t *testing.T) {
		b.do(t, call{method: "POST", path: "/v1/connections", body: `{"provider": "test.echo",`, contentType: "application/json", badRequest: true}).
			expectProblem(t, http.StatusBadRequest, "JSON")
		b.do(t, call{method: "POST", path: "/v1/connections", body: `[1,2]`, contentType: "application/json", badRequest: true}).
			expectProblem(t, http.StatusBadRequest, "must be a JSON object")
		b.do(t, call{method: "POST", path: "/v1/connections", body: `{"name": 5}`, contentType: "application/json", badRequest: true}).
			expectProblem(t, http.StatusBadRequest, "name: expected a string")
		b.do(t, call{method: "POST", path: "/v1/connections", body: ``, contentType: "application/json", badRequest: true}).
			expectProblem(t, http.StatusBadRequest, "empty")
		b.do(t, call{method: "POST", path: "/v1/connections", body: `{"provider":"test.echo","name":"y","secrets":{"token":"abc-secret-1"}} {}`,
			contentType: "application/json", badRequest: true}).expectProblem(t, http.StatusBadRequest, "more than one JSON value")
	})
	t.Run("RejectsWrongContentType", func(t *testing.T) {
		b.do(t, call{method: "POST", path: "/v1/connections", body: `provider=test.echo`, contentType: "text/plain", badRequest: true}).
			expectProblem(t, http.StatusUnsupportedMediaType, "application/json")
	})
	t.Run("NothingWasCreatedByTheRejects", func(t *testing.T) {
		conns, err := b.store.ConnectionList(t.Context(), b.project)
		if err != nil {
			t.Fatal(err)
		}
		if len(conns) != 1 {
			t.Fatalf("project has %d connections, want 1", len(conns))
		}
	})
}

func TestBodyLimits(t *testing.T) {
	t.Parallel()
	b := setup(t, withLimits(2048, 4096))
	b.connection(t, b.key, "hooks")
	big := strings.Repeat("x", 3000)
	t.Run("JSONBodyOverLimitIs413", func(t *testing.T) {
		b.do(t, call{method: "POST", path: "/v1/batches", json: map[string]any{
			"module": "test", "connection": "hooks", "items": []map[string]any{{"to": big}},
		}}).expectProblem(t, http.StatusRequestEntityTooLarge, "2048")
		b.do(t, call{method: "POST", path: "/v1/connections", json: map[string]any{
			"provider": "test.echo", "name": "big", "config": map[string]any{"region": big},
		}, badRequest: true}).expectProblem(t, http.StatusRequestEntityTooLarge)
	})
	t.Run("ChunkedJSONBodyOverLimitIs413", func(t *testing.T) {
		b.do(t, call{method: "POST", path: "/v1/batches", chunked: true, json: map[string]any{
			"module": "test", "connection": "hooks", "items": []map[string]any{{"to": big}},
		}}).expectProblem(t, http.StatusRequestEntityTooLarge, "2048")
	})
	t.Run("UploadOverLimitIs413AndKeepsNothing", func(t *testing.T) {
		d := b.batch(t, map[string]any{"module": "test", "connection": "hooks"})
		var ndjson strings.Builder
		for i := 0; ndjson.Len() < 5000; i++ {
			fmt.Fprintf(&ndjson, "{\"to\":\"r%d\"}\n", i)
		}
		for _, chunked := range []bool{false, true} {
			b.do(t, call{method: "POST", path: "/v1/batches/" + d.ID + "/items", body: ndjson.String(), contentType: "application/x-ndjson", chunked: chunked}).
				expectProblem(t, http.StatusRequestEntityTooLarge, "4096")
		}
		if got := b.getBatch(t, d.ID); got.Total != 0 || got.Status != "draft" {
			t.Fatalf("after a refused upload the batch is %+v", got)
		}
	})
	t.Run("ServerStaysUp", func(t *testing.T) {
		b.do(t, call{method: "GET", path: "/healthz", key: keyOf("")}).expect(t, http.StatusOK)
	})
}

func TestBatchCreate(t *testing.T) {
	t.Parallel()
	b := setup(t)
	conn := b.connection(t, b.key, "hooks")
	b.do(t, call{method: "POST", path: "/v1/connections", json: map[string]any{"provider": "othermod.noop", "name": "noop"}}).
		expect(t, http.StatusCreated)

	t.Run("WithItemsRuns", func(t *testing.T) {
		wakes := b.waker.n.Load()
		r := b.do(t, call{method: "POST", path: "/v1/batches", json: map[string]any{
			"module": "test", "connection": "hooks",
			"template": map[string]any{"to": "default"},
			"items":    append(items(3), map[string]any{"n": 9}),
			"options":  map[string]any{"rate_per_second": 5, "concurrency": 2, "max_attempts": 3, "retry_base_delay": "2s", "retry_max_delay": "1m"},
		}}).expect(t, http.StatusCreated)
		var got batchDoc
		r.decode(t, &got)
		if got.ID == "" || got.Status != "running" || got.Total != 4 || got.Counts.Pending != 4 || got.ConnectionID != conn.ID || got.Module != "test" {
			t.Fatalf("batch %+v", got)
		}
		if r.header.Get("Location") != "/v1/batches/"+got.ID {
			t.Fatalf("Location %q", r.header.Get("Location"))
		}
		if got.Options["retry_base_delay"] != "2s" || got.Options["max_attempts"] != float64(3) {
			t.Fatalf("options %+v", got.Options)
		}
		if b.waker.n.Load() <= wakes {
			t.Fatal("creating a running batch did not wake the engine")
		}
		if again := b.getBatch(t, got.ID); again.Total != 4 || again.Status != "running" {
			t.Fatalf("GET gives %+v", again)
		}
	})
	t.Run("ConnectionByIDWorksToo", func(t *testing.T) {
		got := b.batch(t, map[string]any{"module": "test", "connection": conn.ID, "items": items(1)})
		if got.ConnectionID != conn.ID {
			t.Fatalf("batch %+v", got)
		}
	})
	t.Run("WithoutItemsIsDraft", func(t *testing.T) {
		wakes := b.waker.n.Load()
		got := b.batch(t, map[string]any{"module": "test", "connection": "hooks"})
		if got.Status != "draft" || got.Total != 0 {
			t.Fatalf("batch %+v", got)
		}
		if b.waker.n.Load() != wakes {
			t.Fatal("a draft woke the engine")
		}
	})
	t.Run("FutureSendAtIsScheduled", func(t *testing.T) {
		at := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
		got := b.batch(t, map[string]any{"module": "test", "connection": "hooks", "items": items(2), "options": map[string]any{"send_at": at}})
		if got.Status != "scheduled" || got.Options["send_at"] != at {
			t.Fatalf("batch %+v", got)
		}
	})
	t.Run("PastSendAtRuns", func(t *testing.T) {
		at := time.Now().Add(-time.Hour).Format(time.RFC3339)
		got := b.batch(t, map[string]any{"module": "test", "connection": "hooks", "items": items(2), "options": map[string]any{"send_at": at}})
		if got.Status != "running" {
			t.Fatalf("batch %+v", got)
		}
	})
	t.Run("OtherProjectGets404", func(t *testing.T) {
		got := b.batch(t, map[string]any{"module": "test", "connection": "hooks", "items": items(1)})
		b.do(t, call{method: "GET", path: "/v1/batches/" + got.ID, key: &b.keyB}).expectProblem(t, http.StatusNotFound)
	})

	before := b.batchCount(t)
	tooMany := items(10_001)
	bad := []struct {
		name     string
		body     any
		status   int
		fragment string
	}{
		{"UnknownModule", map[string]any{"module": "fax", "connection": "hooks", "items": items(1)}, 400, `unknown module "fax"`},
		{"MissingModule", map[string]any{"connection": "hooks"}, 400, "module is required"},
		{"MissingConnection", map[string]any{"module": "test"}, 400, "connection is required"},
		{"UnknownConnection", map[string]any{"module": "test", "connection": "nope", "items": items(1)}, 400, `connection "nope"`},
		{"AnotherProjectsConnection", map[string]any{"module": "test", "connection": b.connectionOf(t, "beta-conn"), "items": items(1)}, 400, "no connection"},
		{"ModuleMismatch", map[string]any{"module": "test", "connection": "noop", "items": items(1)}, 400, `belongs to module "othermod"`},
		{"BadItemNamesItsIndex", map[string]any{"module": "test", "connection": "hooks", "items": []map[string]any{{"to": "a"}, {"to": "a b"}}}, 400, "items[1]: to:"},
		{"ItemMissingField", map[string]any{"module": "test", "connection": "hooks", "items": []map[string]any{{"to": "a"}, {"to": "b"}, {"n": 1}}}, 400, "items[2]: to: required"},
		{"ItemUnknownField", map[string]any{"module": "test", "connection": "hooks", "items": []map[string]any{{"to": "a", "cc": "b"}}}, 400, `items[0]: json: unknown field "cc"`},
		{"ItemNotObject", map[string]any{"module": "test", "connection": "hooks", "items": []any{"a"}}, 400, "items[0]: must be a JSON object"},
		{"EmptyItems", map[string]any{"module": "test", "connection": "hooks", "items": []any{}}, 400, "items is empty"},
		{"TooManyItems", map[string]any{"module": "test", "connection": "hooks", "items": tooMany}, 413, "10000"},
		{"BadTemplate", map[string]any{"module": "test", "connection": "hooks", "template": map[string]any{"subject": "x"}, "items": items(1)}, 400, "template:"},
		{"TemplateNotObject", map[string]any{"module": "test", "connection": "hooks", "template": "x"}, 400, "template must be a JSON object"},
		{"BadSendAt", map[string]any{"module": "test", "connection": "hooks", "items": items(1), "options": map[string]any{"send_at": "tomorrow"}}, 400, "options.send_at"},
		{"BadDuration", map[string]any{"module": "test", "connection": "hooks", "items": items(1), "options": map[string]any{"retry_base_delay": "soon"}}, 400, "options.retry_base_delay"},
		{"MaxBelowBase", map[string]any{"module": "test", "connection": "hooks", "items": items(1), "options": map[string]any{"retry_base_delay": "1m", "retry_max_delay": "1s"}}, 400, "options.retry_max_delay"},
		{"TooManyAttempts", map[string]any{"module": "test", "connection": "hooks", "items": items(1), "options": map[string]any{"max_attempts": 1000}}, 400, "options.max_attempts"},
		{"NegativeRate", map[string]any{"module": "test", "connection": "hooks", "items": items(1), "options": map[string]any{"rate_per_second": -1}}, 400, "options.rate_per_second"},
		{"UnknownOption", map[string]any{"module": "test", "connection": "hooks", "items": items(1), "options": map[string]any{"speed": 1}}, 400, `unknown field "speed"`},
		{"WrongType", map[string]any{"module": "test", "connection": "hooks", "options": map[string]any{"concurrency": "many"}}, 400, "options.concurrency: expected an integer"},
	}
	for _, tc := range bad {
		t.Run("Rejects"+tc.name, func(t *testing.T) {
			b.do(t, call{method: "POST", path: "/v1/batches", json: tc.body, badRequest: true}).expectProblem(t, tc.status, tc.fragment)
		})
	}
	t.Run("RejectsMalformedJSON", func(t *testing.T) {
		b.do(t, call{method: "POST", path: "/v1/batches", body: `{"module":"test","connection":"hooks","items":[{"to":"a"},]}`,
			contentType: "application/json", badRequest: true}).expectProblem(t, http.StatusBadRequest, "not valid JSON")
	})
	t.Run("RejectsCSVAsJSON", func(t *testing.T) {
		b.do(t, call{method: "POST", path: "/v1/batches", body: "to\na\n", contentType: "text/csv", badRequest: true}).
			expectProblem(t, http.StatusUnsupportedMediaType)
	})
	t.Run("NothingWasCreatedByTheRejects", func(t *testing.T) {
		if after := b.batchCount(t); after != before {
			t.Fatalf("rejected requests created %d batches", after-before)
		}
	})
	t.Run("PanicIs500WithErrorID", func(t *testing.T) {
		p := b.do(t, call{method: "POST", path: "/v1/batches", json: map[string]any{
			"module": "test", "connection": "hooks", "template": map[string]any{"panic": true}, "items": items(1),
		}}).expectProblem(t, http.StatusInternalServerError, "error_id")
		if !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(p.ErrorID) || strings.Contains(p.Detail, "panic") {
			t.Fatalf("problem %+v", p)
		}
		if logs := b.logs.String(); !strings.Contains(logs, p.ErrorID) || !strings.Contains(logs, "asked to panic") {
			t.Fatalf("the log does not tie error_id %s to the panic", p.ErrorID)
		}
		b.do(t, call{method: "GET", path: "/healthz", key: keyOf("")}).expect(t, http.StatusOK)
	})
}

// batchCount counts the alpha project's batches straight from the store.
func (b *bundle) batchCount(t *testing.T) int {
	t.Helper()
	list, err := b.store.BatchList(t.Context(), batchListParams(b.project))
	if err != nil {
		t.Fatal(err)
	}
	return len(list)
}

// connectionOf makes a connection in project beta and returns its ID.
func (b *bundle) connectionOf(t *testing.T, name string) string {
	t.Helper()
	return b.connection(t, b.keyB, name).ID
}

func TestIdempotencyKey(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.connection(t, b.key, "hooks")
	body := map[string]any{"module": "test", "connection": "hooks", "items": items(3)}
	hdr := map[string]string{"Idempotency-Key": "order-42"}

	first := b.do(t, call{method: "POST", path: "/v1/batches", json: body, header: hdr}).expect(t, http.StatusCreated)
	var fb batchDoc
	first.decode(t, &fb)
	if first.header.Get("Idempotent-Replayed") != "" {
		t.Fatal("the first request is marked as a replay")
	}

	t.Run("SameKeySameBodyReturnsTheFirstBatch", func(t *testing.T) {
		r := b.do(t, call{method: "POST", path: "/v1/batches", json: body, header: hdr}).expect(t, http.StatusCreated)
		var got batchDoc
		r.decode(t, &got)
		if got.ID != fb.ID || r.header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("replay gave %+v, headers %v", got, r.header)
		}
	})
	t.Run("WhitespaceDoesNotMakeADifferentBody", func(t *testing.T) {
		raw, _ := json.MarshalIndent(body, "", "    ")
		var got batchDoc
		b.do(t, call{method: "POST", path: "/v1/batches", body: string(raw), contentType: "application/json", header: hdr}).
			expect(t, http.StatusCreated).decode(t, &got)
		if got.ID != fb.ID {
			t.Fatalf("replay created batch %s", got.ID)
		}
	})
	t.Run("SameKeyOtherBodyIs409", func(t *testing.T) {
		other := map[string]any{"module": "test", "connection": "hooks", "items": items(4)}
		b.do(t, call{method: "POST", path: "/v1/batches", json: other, header: hdr}).expectProblem(t, http.StatusConflict, "order-42", "different request body")
	})
	t.Run("KeysArePerProject", func(t *testing.T) {
		b.connection(t, b.keyB, "hooks")
		var got batchDoc
		b.do(t, call{method: "POST", path: "/v1/batches", json: body, header: hdr, key: &b.keyB}).expect(t, http.StatusCreated).decode(t, &got)
		if got.ID == fb.ID {
			t.Fatal("project beta got alpha's batch")
		}
	})
	t.Run("OverlongKeyIsRefused", func(t *testing.T) {
		b.do(t, call{method: "POST", path: "/v1/batches", json: body, header: map[string]string{"Idempotency-Key": strings.Repeat("k", 300)}, badRequest: true}).
			expectProblem(t, http.StatusBadRequest, "Idempotency-Key")
	})
	t.Run("OnlyOneBatchWasMade", func(t *testing.T) {
		if n := b.batchCount(t); n != 1 {
			t.Fatalf("project alpha has %d batches, want 1", n)
		}
	})
}
