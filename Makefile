# BatchSender developer commands. `make help` lists them.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
BIN ?= bin/batchsender
STATICCHECK_VERSION := v0.8.2
# How long `make fuzz` runs each fuzz target.
FUZZTIME ?= 30000x

.PHONY: help build test test-race lint bench fuzz run clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## Build a static binary into bin/ (CGO_ENABLED=0, version stamped)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/batchsender

test: ## Run the whole test suite with the race detector (what CI runs)
	$(GO) test -race ./...

test-race: test ## Same as test

lint: ## gofmt, go vet and staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@command -v staticcheck >/dev/null || $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	PATH="$$PATH:$$($(GO) env GOPATH)/bin" staticcheck ./...

bench: ## Run the benchmarks once each (short and bounded)
	$(GO) test -run '^$$' -bench . -benchtime 1x -benchmem ./...

fuzz: ## Run every fuzz target of the module for FUZZTIME each
	bash .ci/fuzz $(FUZZTIME)

run: ## Run the server on the embedded SQLite store in ./data
	$(GO) run ./cmd/batchsender serve

clean: ## Remove build output
	rm -rf bin
