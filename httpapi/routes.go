package httpapi

import (
	"net/http"

	"github.com/batchsender/batchsender"
)

// handleRegistrar is what routes registers on: an *http.ServeMux, or the
// tests' recorder that checks the list against openapi.json.
type handleRegistrar interface {
	Handle(pattern string, handler http.Handler)
}

// routes lists the whole API surface. Every pattern here appears in
// openapi.json and the other way round; TestRoutesMatchOpenAPI keeps it so.
func (s *server) routes(mux handleRegistrar) {
	mux.Handle("GET /healthz", s.handleHealthz())
	mux.Handle("GET /readyz", s.handleReadyz())
	mux.Handle("GET /metrics", s.handleMetrics())
	mux.Handle("GET /openapi.json", s.handleOpenAPI())

	mux.Handle("GET /v1/modules", s.auth(s.handleModuleList()))
	mux.Handle("POST /v1/templates/preview", s.auth(s.handleTemplatePreview()))
	mux.Handle("POST /v1/templates", s.auth(s.handleTemplateCreate()))
	mux.Handle("GET /v1/templates", s.auth(s.handleTemplateList()))
	mux.Handle("GET /v1/templates/{name}", s.auth(s.handleTemplateGet(false)))
	mux.Handle("GET /v1/templates/{name}/versions/{version}", s.auth(s.handleTemplateGet(true)))

	mux.Handle("GET /v1/suppressions", s.auth(s.handleSuppressionList()))
	mux.Handle("POST /v1/suppressions", s.auth(s.handleSuppressionImport()))
	mux.Handle("DELETE /v1/suppressions/{channel}/{address}", s.auth(s.handleSuppressionDelete()))

	// Unsubscribe links carry a signed token instead of an API key.
	mux.Handle("GET /u/{token}", s.handleUnsubscribePage())
	mux.Handle("POST /u/{token}", s.handleUnsubscribe())
	// Provider event webhooks carry the provider's signature instead.
	mux.Handle("POST /v1/hooks/{connection_id}/events", s.handleProviderEvents())

	mux.Handle("POST /v1/connections", s.auth(s.handleConnectionCreate()))
	mux.Handle("GET /v1/connections", s.auth(s.handleConnectionList()))
	mux.Handle("GET /v1/connections/{id}", s.auth(s.handleConnectionGet()))

	mux.Handle("POST /v1/batches", s.auth(s.handleBatchCreate()))
	mux.Handle("GET /v1/batches", s.auth(s.handleBatchList()))
	mux.Handle("GET /v1/batches/{id}", s.auth(s.handleBatchGet()))
	mux.Handle("POST /v1/batches/{id}/items", s.auth(s.handleItemsUpload()))
	mux.Handle("GET /v1/batches/{id}/items", s.auth(s.handleItemList()))
	mux.Handle("GET /v1/batches/{id}/items/{item_id}/attempts", s.auth(s.handleAttemptList()))
	mux.Handle("GET /v1/batches/{id}/events", s.auth(s.handleBatchEvents()))
	mux.Handle("POST /v1/batches/{id}/start", s.auth(s.handleBatchTransition(batchsender.ActionStart)))
	mux.Handle("POST /v1/batches/{id}/pause", s.auth(s.handleBatchTransition(batchsender.ActionPause)))
	mux.Handle("POST /v1/batches/{id}/resume", s.auth(s.handleBatchTransition(batchsender.ActionResume)))
	mux.Handle("POST /v1/batches/{id}/cancel", s.auth(s.handleBatchTransition(batchsender.ActionCancel)))
	mux.Handle("POST /v1/batches/{id}/retry-failed", s.auth(s.handleBatchTransition(batchsender.ActionRetryFailed)))
}
