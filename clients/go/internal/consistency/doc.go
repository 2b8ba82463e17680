// Package consistency holds tests that keep generated and written artefacts in step with the code: the Go
// stubs with proto/*.proto, and docs/api.md's Go examples with the Example functions that go test runs.
package consistency
