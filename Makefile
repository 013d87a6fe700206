# Everything a newcomer needs: `make run` and `make test`. See README.md.
GO        ?= go
BIN       := bin
BINARIES  := supernode
RACE_PKGS := ./cdn/... ./cluster/... ./fsm/... ./sdk/... ./scheduler/... ./test/...

.PHONY: all build run test test-race vet fmt bench bench-quick clean

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ $(addprefix ./cmd/,$(BINARIES))

# Three members on loopback in the foreground, data under ./.run/; Ctrl-C stops all three.
run: build
	./deploy/run-local.sh

# Unit, cluster and process tests, then the race detector on the concurrent packages.
test: vet
	$(GO) test -count=1 -timeout 10m ./...
	$(GO) test -count=1 -race -timeout 10m $(RACE_PKGS)

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

# Go benchmarks of the replicated core (results: bench/results/).
bench: build
	./bench/run.sh full

bench-quick: build
	./bench/run.sh quick

clean:
	rm -rf $(BIN) .run
