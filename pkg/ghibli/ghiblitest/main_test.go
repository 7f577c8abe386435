package ghiblitest

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind: the
// fake's waits must all end when a client leaves or the server closes.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
