# Everything a newcomer needs: `make run` and `make test`. See README.md.
GO        ?= go
BIN       := bin
BINARIES  := supernode dfget
RACE_PKGS := ./cdn/... ./cluster/... ./fsm/... ./sdk/... ./scheduler/... ./test/... ./peer/...

.PHONY: all build run test test-race vet fmt bench bench-quick demo e2e clean

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

# An origin, three members and ten dfget peers on loopback distribute one file; prints a
# summary and fails unless every peer got the origin's bytes. Under a minute.
demo: build
	$(GO) build -o $(BIN)/ ./bench/cmd/demo
	./$(BIN)/demo

# End to end on real processes: the demo, then distributions with the leader killed.
e2e: build
	./bench/run.sh e2e

# Every benchmark figure (about 15 minutes; results: bench/results/latest.md, scale.png).
bench: build
	./bench/run.sh full

# The CI guard (under 3 minutes): fails on a wrong download or origin egress over 1.05.
bench-quick: build
	./bench/run.sh quick

clean:
	rm -rf $(BIN) .run
